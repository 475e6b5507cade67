"""EraseDiff and SalUn: each for a few steps on a tiny randomly initialised SD pipeline (the real
code path), the saliency mask against the gradient it ranks, and their bad params."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.errors import HarnessError
from harness.layout import UnlearnFiles
from harness.models.pipelines import load_pipeline
from harness.recipe import load_recipe
from harness.registry import BUILTIN
from harness.runtime import RuntimeSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import resolve_method
from harness.unlearn.run import run as run_unlearning

GENERATION = "{steps: 3, guidance: 3.0, height: 64, width: 64, batch_size: 4}"
RETAIN = "retain: {source: prompts, prompts: [a photo of a cat, a photo of a dog], concept_filter: none}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def recipe(tmp_path: Path, model: Path, method: str, target: str = "golf ball", extra: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: {model}\nconcept: {{target: {target}, kind: object}}\n"
                    f"methods: [{method}]\ngeneration: {GENERATION}\n{extra}")
    return path


def unlearn(tmp_path: Path, path: Path):
    return run_unlearning(UnlearnJob.from_recipe(load_recipe(path), None, tmp_path / "out", RuntimeSettings(device="cpu")))


def changed_tensors(tmp_path: Path, tiny: Path) -> dict[str, torch.Tensor]:
    """name -> bool tensor of the entries the run changed."""
    tensors = load_file(UnlearnFiles(tmp_path / "out").tensors)
    before = dict(load_pipeline(str(tiny)).unet.named_parameters())
    return {n: t != before[n].detach().float() for n, t in tensors.items()}


def test_both_are_registered() -> None:
    from harness.unlearn.erasediff import erasediff
    from harness.unlearn.salun import salun

    assert {"erasediff", "salun", "saliency"} <= set(BUILTIN["method"])
    assert resolve_method("erasediff").target is erasediff and resolve_method("salun").target is salun


def test_erasediff_lowers_the_forget_loss_and_trains_the_whole_network(tiny: Path, tmp_path: Path) -> None:
    method = (f"{{method: erasediff, params: {{steps: 6, round_steps: 2, forget_samples: 4, batch_size: 2, "
              f"lr: 1.0e-3, lam: 5, {RETAIN}}}}}")
    record = unlearn(tmp_path, recipe(tmp_path, tiny, method))
    inner = record.info["inner_mean_losses"]
    assert len(inner) == 3 and inner[2] < inner[1] < inner[0]  # each round's f_bar: f falls round by round
    assert record.info["anchor"] == "a photo of a pokemon" and record.info["fidelity"] == "paper"
    changed = changed_tensors(tmp_path, tiny)
    moved = {n for n, m in changed.items() if m.any()}
    for part in ("conv_in.", "time_embedding.", "down_blocks.0.resnets.", "mid_block.", "up_blocks.1.attentions.",
                 ".attn1.", ".attn2.", ".ff.", "conv_out."):
        assert any(part in n for n in moved), part
    assert len(moved) > 0.9 * len(changed)


def test_erasediff_reference_code_keeps_only_the_last_rounds_outer_steps(tiny: Path, tmp_path: Path) -> None:
    """Under reference-code the reset inside the K loop goes back to the epoch's start, so with K = 2
    in one epoch the first round's 2 outer steps leave no trace: the weights move less than when
    every round resets to its own start (4 outer steps count)."""
    base = (f"steps: 4, round_steps: 2, k_steps: 2, forget_samples: 4, batch_size: 2, lr: 1.0e-3, lam: 5, {RETAIN}")
    reference = unlearn(tmp_path / "a", recipe(tmp_path, tiny, f"{{method: erasediff, params: {{{base}}}}}",
                                               extra="fidelity: reference-code\n"))
    fixed = unlearn(tmp_path / "b", recipe(tmp_path, tiny, f"{{method: erasediff, params: {{{base}}}}}"))
    assert reference.info["fidelity"] == "reference-code" and fixed.info["fidelity"] == "paper"
    drift = {}
    for run in ("a", "b"):
        tensors = load_file(UnlearnFiles(tmp_path / run / "out").tensors)
        before = dict(load_pipeline(str(tiny)).unet.named_parameters())
        drift[run] = sum(float((t - before[n].detach()).abs().sum()) for n, t in tensors.items())
    assert drift["a"] < drift["b"]  # 2 of the 4 outer steps were thrown away


def test_salun_keeps_half_of_the_entries_by_saliency_and_moves_only_those(tiny: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.unlearn.salun as salun

    seen = {}
    original = salun.saliency_mask

    def spy(pipeline, forget, names, *args):
        masks = original(pipeline, forget, names, *args)
        seen["grads"] = saliency_gradients(pipeline, forget, names, *args)
        seen["masks"] = masks
        return masks

    monkeypatch.setattr(salun, "saliency_mask", spy)
    method = f"{{method: salun, params: {{steps: 3, forget_samples: 4, batch_size: 2, lr: 1.0e-3, {RETAIN}}}}}"
    record = unlearn(tmp_path, recipe(tmp_path, tiny, method))
    masks, grads = seen["masks"], seen["grads"]
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * total)
    assert record.info["saliency_share"] == pytest.approx(0.5) and record.info["other"] == ["an image of a parachute"]
    kept = torch.cat([grads[n][masks[n]] for n in masks])
    left = torch.cat([grads[n][~masks[n]] for n in masks])
    assert kept.min() >= left.max()  # one global threshold over every tensor
    shares = [float(m.float().mean()) for m in masks.values() if m.numel() > 1000]
    assert max(shares) - min(shares) > 0.2  # ... not a per-layer one
    changed = changed_tensors(tmp_path, tiny)
    assert set(changed) == set(masks)
    assert not any((changed[n] & ~masks[n]).any() for n in masks) and record.info["changed_outside_mask"] == 0
    assert sum(int(c.sum()) for c in changed.values()) > 0.3 * total  # most masked entries do move


def saliency_gradients(pipeline, forget, names, guidance, fraction, batch_size, seed, device) -> dict[str, torch.Tensor]:
    """|g| per tensor, recomputed the same way (same seed) for the test."""
    from diffusers import DDPMScheduler
    from torch.nn import functional as F

    from harness.train.denoise import noise_samples

    unet = pipeline.unet
    params = dict(unet.named_parameters())
    for p in params.values():
        p.grad = None
    with torch.no_grad():
        embeddings, _ = pipeline.encode_prompt(forget.table, device, 1, False)
        empty, _ = pipeline.encode_prompt([""], device, 1, False)
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    for index in torch.arange(len(forget)).split(batch_size):
        noised = noise_samples(scheduler, forget.inputs[index], generator)
        c = unet(noised.inputs, noised.timesteps, encoder_hidden_states=embeddings[forget.prompt_index[index]]).sample
        u = unet(noised.inputs, noised.timesteps, encoder_hidden_states=empty.expand(len(index), -1, -1)).sample
        (-F.mse_loss((1 + guidance) * c - guidance * u, noised.target)).backward()
    grads = {n: params[n].grad.abs().clone() for n in names}
    for p in params.values():
        p.grad = None
    return grads


@pytest.mark.parametrize(("method", "message"), [
    ("{method: erasediff, params: {lam: -1}}", r"methods\[0\]\.params: lam must not be negative"),
    ("{method: erasediff, params: {k_steps: 0}}", r"methods\[0\]\.params: k_steps "),
    ("{method: salun, params: {mask_fraction: 1.5}}", r"methods\[0\]\.params: mask_fraction "),
    ("{method: salun, params: {weight_decay: 0.01}}", r"methods\[0\]\.params: weight_decay must be 0 for salun"),
    ("{method: salun, params: {alpa: 0.5}}", r"methods\[0\]\.params: unknown key 'alpa'"),
])
def test_bad_params_are_one_line_errors_naming_the_key(tiny: Path, tmp_path: Path, method: str, message: str) -> None:
    with pytest.raises(HarnessError, match=message) as caught:
        load_recipe(recipe(tmp_path, tiny, method))
    assert "\n" not in str(caught.value)


def test_salun_asks_for_the_other_concept_when_no_next_class_is_known(tiny: Path, tmp_path: Path) -> None:
    path = recipe(tmp_path, tiny, f"{{method: salun, params: {{steps: 1, forget_samples: 2, {RETAIN}}}}}", target="teapot")
    with pytest.raises(HarnessError, match=r"methods\[0\]\.params\.other: name the other concept's prompts") as caught:
        unlearn(tmp_path, path)
    assert "\n" not in str(caught.value)
