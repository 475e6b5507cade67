"""UCE: the closed form against a direct solve, the method on a tiny SD pipeline and in the
miniature world, and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.layout import UnlearnFiles
from harness.models.pipelines import apply_tensors, load_pipeline
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning
from harness.unlearn.uce import concept_vectors, uce_solve

GENERATION = "{steps: 3, guidance: 3.0, height: 64, width: 64, batch_size: 4}"


@pytest.mark.parametrize("seed", [0, 1])
def test_the_closed_form_matches_a_direct_solve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, e, g, p = rng.normal(size=(6, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), rng.normal(size=(1, 5))
    s_e, s_p, lamb = 1.5, 0.7, 0.5
    # the formula as written: [lamb W + s_e sum v*_i e_i^T + s_p sum v_j p_j^T] [lamb I + s_e sum e_i e_i^T + s_p sum p_j p_j^T]^-1
    left = lamb * w + s_e * sum(np.outer(w @ gi, ei) for ei, gi in zip(e, g)) + s_p * np.outer(w @ p[0], p[0])
    right = lamb * np.eye(5) + s_e * e.T @ e + s_p * p.T @ p
    expected = left @ np.linalg.inv(right)
    got = uce_solve(torch.tensor(w), torch.tensor(e), torch.tensor(g), torch.tensor(p), s_e, s_p, lamb).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    # ... and it is the minimiser: the objective's gradient vanishes there
    grad = (s_e * sum(np.outer(got @ ei - w @ gi, ei) for ei, gi in zip(e, g))
            + s_p * np.outer(got @ p[0] - w @ p[0], p[0]) + lamb * (got - w))
    np.testing.assert_allclose(grad, 0, atol=1e-10)


def test_without_concepts_the_weight_is_unchanged_and_large_erase_scales_reach_the_guide() -> None:
    torch.manual_seed(0)
    w, e, g = torch.randn(4, 3), torch.randn(1, 3), torch.randn(1, 3)
    empty = torch.zeros(0, 3)
    assert torch.allclose(uce_solve(w, empty, empty, empty, 1.0, 1.0, 0.5), w.double())
    new = uce_solve(w, e, g, empty, 1e6, 1.0, 0.5)
    assert torch.allclose(new @ e[0].double(), w.double() @ g[0].double(), atol=1e-4)
    with pytest.raises(HarnessError, match="params.lamb: the closed form is singular"):
        uce_solve(w, e, g, empty, 1.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def recipe(tmp_path: Path, model: Path | str, method: str, concept: str = "{target: golf ball, kind: object}",
           extra: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: {model}\nconcept: {concept}\nmethods: [{method}]\ngeneration: {GENERATION}\n{extra}")
    return path


def unlearn(tmp_path: Path, path: Path):
    return run_unlearning(UnlearnJob.from_recipe(load_recipe(path), None, tmp_path / "out", RuntimeSettings(device="cpu")))


def test_uce_edits_every_cross_attention_key_and_value_of_a_tiny_sd_pipeline(tiny: Path, tmp_path: Path) -> None:
    record = unlearn(tmp_path, recipe(tmp_path, tiny, "{method: uce, params: {preserve: [a photo of a cat]}}"))
    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    pipeline = load_pipeline(str(tiny))
    expected = sorted(n for n, _ in pipeline.unet.named_parameters() if ".attn2.to_k.weight" in n or ".attn2.to_v.weight" in n)
    assert sorted(tensors) == expected and len(expected) == 8 and record.changed > 0
    assert record.info["erase"] == ["golf ball"] and record.info["guide"] == [""]
    assert record.seconds < 30
    # the edited projections send "golf ball" (nearly) where they sent the empty prompt
    e, g, p = concept_vectors(pipeline, ["golf ball", "", "a photo of a cat"])
    modules = dict(pipeline.unet.named_modules())
    for name, new in tensors.items():
        old = modules[name.removesuffix(".weight")].weight.detach().double()
        moved, kept = new.double() @ e - old @ g, new.double() @ p - old @ p
        assert moved.norm() < 0.2 * (old @ e - old @ g).norm() and kept.norm() < 0.2 * (old @ p).norm()


def test_reference_code_edits_the_2023_scripts_token_slices_and_preserves_every_position(
        tiny: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, tiny, "{method: uce, params: {preserve: [a photo of a cat]}}",
                  extra="fidelity: reference-code\n")
    record = unlearn(tmp_path, path)
    info = record.info
    assert info["fidelity"] == "reference-code" and info["guide"] == [" "]
    assert info["preserve"] == ["", "a photo of a cat"] and info["preserve_scale"] == 0.5
    pipeline = load_pipeline(str(tiny))
    length = pipeline.tokenizer.model_max_length
    words = len(pipeline.tokenizer("golf ball")["input_ids"]) - 2      # the slice starts at the last word
    assert info["vectors"] == {"erase": length - words, "preserve": 2 * length}
    # the edit is the closed form on the erase slice, the guide's aligned slice and every position
    # of "" and the preserve prompt, at preserve_scale 1/2
    embeddings, _ = pipeline.encode_prompt(["golf ball", " ", "", "a photo of a cat"], "cpu", 1, False)
    embeddings = embeddings.detach().double()
    e, g = embeddings[0, words:], embeddings[1, :length - words]
    kept = embeddings[2:].reshape(-1, embeddings.shape[-1])
    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    modules = dict(pipeline.unet.named_modules())
    for name, new in tensors.items():
        old = modules[name.removesuffix(".weight")].weight.detach()
        expected = uce_solve(old, e, g, kept, 1.0, 0.5, 0.5).float()
        torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
    # the current code's form edits one vector per concept: a different edit of the same recipe
    current = unlearn(tmp_path / "current", recipe(tmp_path, tiny, "{method: uce, params: {preserve: [a photo of a cat]}}"))
    assert current.info["vectors"] == {"erase": 1, "preserve": 1} and current.info["preserve_scale"] == 1.0
    other = load_file(UnlearnFiles(tmp_path / "current" / "out").tensors)
    assert all(not torch.allclose(other[name], tensors[name]) for name in tensors)


def test_uce_on_artists_guides_to_art_and_expands_prompts(tiny: Path, tmp_path: Path) -> None:
    record = unlearn(tmp_path, recipe(tmp_path, tiny, "{method: uce, params: {expand_prompts: true}}",
                                      "{target: Van Gogh, kind: artist}"))
    assert record.info["erase"] == ["Van Gogh", "painting by Van Gogh", "art by Van Gogh", "artwork by Van Gogh",
                                    "picture by Van Gogh", "style of Van Gogh"]
    assert record.info["guide"] == ["art"] * 6 and record.info["preserve"] == []


@pytest.mark.parametrize(("params", "message"), [
    ("{erase: []}", "methods[0].params.erase: names no concept to erase"),
    ("{preserve: [Golf Ball]}", "methods[0].params.preserve: 'Golf Ball' is also erased ('golf ball')"),
    ("{erase: [a golf ball, a tee], preserve: [a tee]}", "methods[0].params.preserve: 'a tee' is also erased"),
    ("{erase: [a, b, c], guide: [x, y]}", "methods[0].params.guide: lists 2 guide concepts for 3 erase concepts"),
    ("{lamb: -1}", "methods[0].params: lamb must not be negative"),
], ids=["empty-erase", "preserve-is-the-concept", "preserve-is-erased", "guides", "lamb"])
def test_bad_uce_params_are_one_line_errors_naming_the_key(tiny: Path, tmp_path: Path, params: str, message: str) -> None:
    path = recipe(tmp_path, tiny, f"{{method: uce, params: {params}}}")
    with pytest.raises(HarnessError) as caught:
        unlearn(tmp_path, path)
    assert message in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_uce_refuses_layers_that_do_not_read_the_text(tiny: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, tiny, "{method: uce, layers: ['*attn1.to_k.weight']}")
    with pytest.raises(HarnessError, match="methods\\[0\\].layers: .*is not the weight of a linear layer that reads the text"):
        unlearn(tmp_path, path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_uce_lowers_the_share_of_sevens_in_the_world(tmp_path_factory, monkeypatch, method_context, run_method) -> None:
    from harness.models.layers import select_layers
    from harness.worlds.digits.classifier import load_classifier
    from harness.worlds.digits.data import concept_prompts
    from harness.worlds.digits.store import ensure_world

    world = ensure_world(tmp_path_factory.mktemp("cache"))
    monkeypatch.setenv("HARNESS_CACHE", str(world.parent.parent))
    pipeline = load_pipeline("zoo:digits")
    classifier = load_classifier(world).eval()
    counts = [10 if d == 7 else 2 for d in range(10)]
    labels = torch.tensor([d for d in range(10) for _ in range(counts[d])])
    prompts = [concept_prompts(int(d))[i % 5] for i, d in enumerate(labels)]

    @torch.no_grad()
    def shares() -> list[float]:
        images = pipeline(prompts, num_inference_steps=25, guidance_scale=3.0, output_type="pt",
                          generator=[torch.Generator().manual_seed(100 + i) for i in range(len(labels))]).images
        hits = (classifier(images).argmax(1) == labels).float()
        return [hits[labels == d].mean().item() for d in range(10)]

    pretrained = shares()
    layers = select_layers(dict(pipeline.unet.named_parameters()), ["*attn2.to_k.weight", "*attn2.to_v.weight"])
    context = method_context(pipeline, ConceptSettings("seven", "digit"), layers, GenerationSettings(steps=25))
    result = run_method("uce", context, {})
    assert result.info["erase"] == concept_prompts(7) and len(result.tensors) == 14
    apply_tensors(pipeline, result.tensors)
    erased = shares()
    others = [d for d in range(10) if d != 7]
    assert pretrained[7] >= 0.9 and erased[7] <= 0.7 * pretrained[7]
    assert sum(erased[d] for d in others) >= 0.85 * sum(pretrained[d] for d in others)
