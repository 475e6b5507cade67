"""Loading a text-to-image pipeline by name, writing changed UNet and text-encoder tensors into
it, and calling it the same way everywhere (unlearning methods, attacks and generation).

A pipeline is any diffusers pipeline called like StableDiffusionPipeline (prompt, steps,
guidance, generator, output_type) whose `encode_prompt(prompt, device, num_images_per_prompt,
do_classifier_free_guidance)` returns the UNet's conditioning; classes that diffusers does not
know by name (a world's own pipeline) are registered in harness.registry (kind `pipeline`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from harness.errors import HarnessError
from harness.models.checkpoints import is_hub_id, resolve_local
from harness.models.components import is_text_encoder, model_parameters
from harness.models.hub import hub_reachable, mirror_hint, unreachable_message
from harness.registry import registered, resolve

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_pipeline(
    source: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """A pipeline from a hub id, a local diffusers folder or `zoo:NAME`; safety checker off."""
    quiet_loading()
    if is_hub_id(source):
        location: str | Path = source
        class_name = "StableDiffusionPipeline"
    else:
        location = resolve_local(source)
        index = location / "model_index.json"
        if not index.is_file():
            raise HarnessError(f"{source}: not a pipeline (no model_index.json in {location})")
        class_name = json.loads(index.read_text()).get("_class_name", "")
    if class_name in registered("pipeline"):
        cls = resolve("pipeline", class_name).target
        pipeline = cls.from_pretrained(location, dtype=dtype)
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False} if "StableDiffusion" in class_name else {}
        pipeline = _from_pretrained(source, location, dtype, extra)
    log.debug("loaded %s from %s", class_name, location)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def _from_pretrained(source: str, location: str | Path, dtype: torch.dtype | None, extra: dict) -> DiffusionPipeline:
    """diffusers' loader: from the local folder or hub cache, else from the hub when it answers."""
    try:
        return DiffusionPipeline.from_pretrained(location, dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError) as error:
        if not is_hub_id(source):
            raise HarnessError(f"{source}: cannot load the pipeline ({_first_line(error)})") from None
    if not hub_reachable():
        raise HarnessError(unreachable_message(f"pipeline {source}", "a local diffusers folder as the model", source))
    try:
        return DiffusionPipeline.from_pretrained(location, dtype=dtype, **extra)
    except (OSError, ValueError) as error:
        raise HarnessError(f"{source}: cannot load the pipeline ({_first_line(error)}){mirror_hint(source)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def quiet_loading() -> None:
    """No per-component loading bars from diffusers and transformers (the harness shows its own)."""
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def apply_tensors(pipeline: DiffusionPipeline, tensors: dict[str, torch.Tensor]) -> None:
    """Copy changed tensors into the pipeline in place: UNet parameters by name, text-encoder
    ones under `text_encoder.` (harness.models.components); dtype and device follow the
    component. Errors are keyed (the caller names the file with `in_file`)."""
    params = model_parameters(pipeline)
    for name, value in tensors.items():
        if name not in params:
            where = "text encoder" if is_text_encoder(name) else "UNet"
            raise HarnessError(f"'{name}' is not a parameter of the pipeline's {where}", key="")
        if tuple(params[name].shape) != tuple(value.shape):
            raise HarnessError(f"'{name}' has shape {tuple(value.shape)}, the model's has {tuple(params[name].shape)}",
                               key="")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise HarnessError(f"'{name}' holds non-finite values", key="")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))


def add_tokens(pipeline: Any, tokens: dict[str, torch.Tensor]) -> None:
    """New words of the pipeline's prompt vocabulary, each with its input embedding (what textual
    inversion learns): the tokenizer gets the token, the text encoder a row for it. Errors are keyed."""
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    width = encoder.get_input_embeddings().weight.shape[1]
    for token, vector in tokens.items():
        if token in tokenizer.get_vocab():
            raise HarnessError(f"token '{token}' is already a word of the model's vocabulary", key="")
        if tuple(vector.shape) != (width,):
            raise HarnessError(f"token '{token}' has an embedding of shape {tuple(vector.shape)}, the model's is ({width},)",
                               key="")
    tokenizer.add_tokens(list(tokens))
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # every new row is set below
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vector in tokens.items():
            weight[tokenizer.convert_tokens_to_ids(token)] = vector.to(weight)


@torch.no_grad()
def prompt_embeddings(pipeline: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """The UNet's conditioning for `prompts`, made the way the pipeline itself makes it."""
    embeddings, _ = pipeline.encode_prompt(prompts, pipeline.unet.device, 1, False)
    return embeddings.to(pipeline.unet.dtype)


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """`auto` is float16 on a GPU (as the protocol generates) and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[name]


def is_scheduler(name: str) -> bool:
    """Whether `name` is a diffusers scheduler class."""
    cls = getattr(diffusers, name, None)
    return isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)


def set_scheduler(pipeline: Any, name: str | None) -> None:
    """Swap in the diffusers scheduler class `name`, built from the current scheduler's config
    (an unknown name is an error keyed at the recipe's `generation.scheduler`)."""
    if name is None or type(pipeline.scheduler).__name__ == name:
        return
    if not is_scheduler(name):
        raise HarnessError(f"'{name}' is not a diffusers scheduler", key="generation.scheduler", rooted=True)
    pipeline.scheduler = getattr(diffusers, name).from_config(pipeline.scheduler.config)


def scheduler_config(source: str) -> dict[str, Any] | None:
    """The model's own scheduler config without loading the pipeline: a local folder's or a
    world's `scheduler/scheduler_config.json`, or the hub cache's copy; None when not at hand."""
    path: Path | None = None
    try:
        if is_hub_id(source):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "scheduler/scheduler_config.json")
            path = Path(cached) if isinstance(cached, str) else None
        else:
            path = resolve_local(source) / "scheduler" / "scheduler_config.json"
        return json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (HarnessError, OSError, ValueError):
        return None


def unet_calls(source: str, scheduler: str | None, steps: int) -> tuple[int, str | None]:
    """How many UNet calls a pipeline of model `source` makes in `steps` sampling steps with the
    scheduler class `scheduler` (None: the model's own), and that class's name. PNDM, as SD
    configures it, makes steps + 1; Heun 2 * steps - 1. Where the scheduler cannot be built
    without loading the model, `steps` (no sampler makes fewer) and None."""
    config = scheduler_config(source) or {}
    name = scheduler or config.get("_class_name")
    if not name or not is_scheduler(name):
        return steps, None
    if not config and name == "PNDMScheduler":
        config = {"skip_prk_steps": True}  # every SD v1.x/v2.x config
    try:
        instance = getattr(diffusers, name).from_config(config)
        instance.set_timesteps(steps)
        return max(steps, len(instance.timesteps)) if name == "PNDMScheduler" else len(instance.timesteps), name
    except Exception:  # noqa: BLE001 - a config this scheduler cannot take: the bound that always holds
        return steps, None


@torch.no_grad()
def model_samples(pipeline: Any, prompts: list[str], generation: Any, seeds: list[int], desc: str = "samples") -> torch.Tensor:
    """The pipeline's own samples for `prompts` in the UNet's input space, sample i from seed
    `seeds[i]` (`generation` is a recipe's GenerationSettings): a latent pipeline (one with a
    `vae`) gives its latents; a pixel-space pipeline's images in [0, 1] map back to [-1, 1]."""
    from harness.progress import bar

    latent = getattr(pipeline, "vae", None) is not None
    batch = max(1, generation.batch_size)
    outputs = []
    for start in bar(range(0, len(prompts), batch), desc=desc, unit="batch", leave=False):
        kwargs = generation.pipeline_kwargs(prompts[start : start + batch], seeds[start : start + batch])
        kwargs["output_type"] = "latent" if latent else "pt"
        images = pipeline(**kwargs).images
        outputs.append(images if latent else images * 2 - 1)
    return torch.cat(outputs)
