"""Shared fixtures: the checkout's paths, the mirrored prompt data, one torch thread (on 2 shared
cores, more threads run slower), and tiny SD-shaped models built in memory (nothing downloaded).

Builders that a test calls with arguments are factory fixtures: the fixture's value is the
function (`def test_x(tiny_sd_pipeline): pipeline = tiny_sd_pipeline(seed=1)`). diffusers and
transformers are imported when a builder runs, not when the tests are collected.

Tiers: tests marked `slow` (subprocesses, SIGKILL, DDP, the wheel, world training, the matrix)
are left out by `python -m pytest -q -m "not slow"`; `python -m pytest -q` runs everything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

TINY_FFN_LAYERS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2.weight",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight",
]
"""The parameters `harness.recipe.SD_FFN_LAYERS` selects in the tiny SD pipeline's UNet, in the
UNet's parameter order (diffusers registers mid_block after up_blocks)."""


# paths and data --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo() -> Path:
    """The checkout's root (pyproject.toml, harness/, slurm/); subprocesses put it on PYTHONPATH."""
    return REPO


@pytest.fixture(scope="session")
def recipes_dir(repo: Path) -> Path:
    """The shipped recipes in the checkout."""
    return repo / "harness" / "resources" / "recipes"


@pytest.fixture(scope="session")
def manifests_dir(repo: Path) -> Path:
    """The shipped prompt-suite manifests in the checkout."""
    return repo / "harness" / "resources" / "manifests"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


# tiny SD-shaped models ---------------------------------------------------------------------------


def _tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """CLIP's byte-level BPE over single characters: every printable byte, alone or word-final."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        for token in (char, f"{char}</w>"):
            vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A fresh randomly initialised StableDiffusionPipeline, deterministic in `seed`.

    Same component classes and parameter names as Stable Diffusion v1.x (cross-attention
    transformer blocks with GEGLU feed-forwards in down, mid and up blocks; VAE; CLIP text
    encoder; PNDM), only tiny: 64x64 images, 8x8 latents. The tokenizer is `tiny_tokenizer`'s."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _save_tiny_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline as a diffusers folder (model_index.json and components)."""
    _tiny_sd_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def _tiny_conceptprune_recipe(folder: Path) -> Path:
    """`folder/r.yaml`: ConceptPrune erasing "golf ball" from a tiny SD pipeline saved in
    `folder/pipe` (3 sampling steps at 64 px, tau 2)."""
    model = _save_tiny_sd_pipeline(folder / "pipe")
    recipe = folder / "r.yaml"
    recipe.write_text(
        f"name: tiny\nmodel: {model}\nconcept: {{target: golf ball, kind: object}}\n"
        "methods: [{method: conceptprune, params: {skill_ratio: 0.05, tau: 2}}]\n"
        "generation: {steps: 3, height: 64, width: 64, batch_size: 12}\n"
    )
    return recipe


def _tiny_sd_unet(seed: int = 0, width: int = 32) -> UNet2DConditionModel:
    """A randomly initialised UNet with SD-v1.x's block structure (down 0-2 and up 1-3 with
    attentions, a mid block: 16 transformer blocks with GEGLU feed-forwards under the same names)
    at toy width."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(width, width, 2 * width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


@pytest.fixture(scope="session")
def tiny_ffn_layers() -> list[str]:
    """The tiny SD pipeline's feed-forward output weights that ConceptPrune targets."""
    return list(TINY_FFN_LAYERS)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Callable[..., CLIPTokenizer]:
    """`tiny_tokenizer(max_length=77)`: a CLIP tokenizer over single characters, built in memory."""
    return _tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_sd_pipeline() -> Callable[..., StableDiffusionPipeline]:
    """`tiny_sd_pipeline(seed=0)`: a fresh tiny StableDiffusionPipeline (64x64 images)."""
    return _tiny_sd_pipeline


@pytest.fixture(scope="session")
def save_tiny_sd_pipeline() -> Callable[..., Path]:
    """`save_tiny_sd_pipeline(folder, seed=0)`: a tiny pipeline written as a diffusers folder."""
    return _save_tiny_sd_pipeline


@pytest.fixture(scope="session")
def tiny_conceptprune_recipe() -> Callable[[Path], Path]:
    """`tiny_conceptprune_recipe(folder)`: a ConceptPrune recipe on a tiny pipeline in `folder`."""
    return _tiny_conceptprune_recipe


@pytest.fixture(scope="session")
def tiny_sd_unet() -> Callable[..., UNet2DConditionModel]:
    """`tiny_sd_unet(seed=0, width=32)`: a tiny UNet with SD-v1.x's module layout."""
    return _tiny_sd_unet


@pytest.fixture
def method_context():
    """Build an UnlearnContext as the unlearn stage does (a job and what it loaded), to call a
    method directly: `method_context(pipeline, concept, layers, generation, data_dir=..., source=...)`."""
    from harness.runtime import RuntimeSettings
    from harness.settings.unlearn import MethodSettings
    from harness.unlearn.job import UnlearnJob
    from harness.unlearn.method import UnlearnContext

    def build(pipeline, concept, layers, generation, data_dir=None, source="recipe", entry="methods[0]",
              scratch=None, settings_key=""):
        job = UnlearnJob(model="test", concept=concept, method=MethodSettings("conceptprune"), generation=generation,
                         out=Path("unused"), runtime=RuntimeSettings(device="cpu", data_dir=str(data_dir) if data_dir else None),
                         source=source, entry=entry)
        return UnlearnContext(job=job, pipeline=pipeline, layers=layers, device=torch.device("cpu"), scratch=scratch,
                              settings_key=settings_key)

    return build


@pytest.fixture
def run_method():
    """Call a registered method on a context with a params mapping, as the unlearn stage does
    (params parsed by the method's declared type; errors name the context's file and entry)."""
    from harness.errors import in_file, keyed
    from harness.unlearn.method import call_method, resolve_method

    def call(name, context, params):
        with in_file(context.job.source), keyed(context.job.entry):
            return call_method(resolve_method(name), context, params)

    return call


@pytest.fixture(scope="session")
def benchmark_function() -> Callable[[str, str], Callable]:
    """`benchmark_function(file_stem, name)`: a function of a script in benchmarks/ (not a package),
    loaded by path: the one copy of a previous implementation that tests compare against."""
    import importlib.util

    def load(stem: str, name: str) -> Callable:
        spec = importlib.util.spec_from_file_location(stem, REPO / "benchmarks" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)

    return load

