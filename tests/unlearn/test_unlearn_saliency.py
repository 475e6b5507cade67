"""Gradient-saliency masks on the tiny SD-shaped pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.saliency import SaliencyParams, forgetting_gradients, top_fraction


@pytest.fixture
def context(tmp_path: Path, method_context, tiny_sd_pipeline, tiny_ffn_layers):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "common_scenes.txt").write_text("road\ngarden\n")
    return method_context(tiny_sd_pipeline(), ConceptSettings(target="golf ball", kind="object"), tiny_ffn_layers,
                          GenerationSettings(steps=2, height=64, width=64), data_dir=data, source="r.yaml")


def test_top_fraction_per_layer_and_global() -> None:
    scores = {"a": torch.tensor([[1.0, 5.0], [3.0, 0.0]]), "b": torch.tensor([9.0, 8.0, 0.5, 0.1])}
    per_layer = top_fraction(scores, 0.5, "layer")
    assert per_layer["a"].tolist() == [[False, True], [True, False]]
    assert per_layer["b"].tolist() == [True, True, False, False]
    overall = top_fraction(scores, 0.25, "global")  # 2 of 8 entries: 9 and 8, both in b
    assert not overall["a"].any() and overall["b"].tolist() == [True, True, False, False]


def test_gradients_are_those_of_the_denoising_loss_and_leave_no_trace(context, tiny_ffn_layers) -> None:
    unet = context.pipeline.unet
    samples = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    settings = SaliencyParams(noise_draws=1, seed=5)
    grads = forgetting_gradients(context.pipeline, tiny_ffn_layers, ["a", "b"], samples, settings)
    assert set(grads) == set(tiny_ffn_layers) and all(g.abs().sum() > 0 for g in grads.values())
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())
    again = forgetting_gradients(context.pipeline, tiny_ffn_layers, ["a", "b"], samples, settings)
    assert all(torch.equal(grads[n], again[n]) for n in grads)


def test_saliency_zeroes_the_top_fraction_by_each_criterion(context, run_method, tiny_ffn_layers) -> None:
    weights = {n: p.detach().clone() for n, p in context.pipeline.unet.named_parameters()}
    salun = run_method("saliency", context, {"fraction": 0.05, "samples": 2, "noise_draws": 1})
    for name in tiny_ffn_layers:
        assert int(salun.masks[name].sum()) == round(0.05 * weights[name].numel())
        assert torch.all(salun.tensors[name][salun.masks[name]] == 0)
        assert torch.equal(salun.tensors[name][~salun.masks[name]], weights[name][~salun.masks[name]])
    scissor = run_method("saliency", context, {"fraction": 0.05, "samples": 2, "noise_draws": 1, "criterion": "scissorhands"})
    assert any(not torch.equal(salun.masks[n], scissor.masks[n]) for n in tiny_ffn_layers)
    assert salun.info["prompts"]["target"] == ["a golf ball in a garden", "a golf ball in a road"]


def test_saliency_params_errors_name_the_key(context, run_method) -> None:
    with pytest.raises(HarnessError, match=r"r.yaml: methods\[0\].params.criterion: unknown value 'snip'"):
        run_method("saliency", context, {"criterion": "snip"})
    with pytest.raises(HarnessError, match=r"r.yaml: methods\[0\].params: fraction must lie in \(0, 1\)"):
        run_method("saliency", context, {"fraction": 1.5})
