"""Learned pruning masks (P-ESD, P-AC): the mask machinery on its own, and both methods for a
few steps on a tiny randomly initialised SD pipeline (the default layers, exact zeros, the
budget, the UNet left without parametrizations)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.layout import UnlearnFiles
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.train.engine import Objective
from harness.train.masking import MaskLearning, MaskObjective, WeightMask, hard_masks, temperature_at
from harness.unlearn.job import UnlearnJob
from harness.unlearn.learned_mask import MASK_LAYERS
from harness.unlearn.run import run as run_unlearning

GENERATION = "{steps: 3, guidance: 3.0, height: 64, width: 64, batch_size: 4}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, save_tiny_sd_pipeline) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def test_the_hard_mask_prunes_only_negative_scores_and_at_most_the_budget_lowest_first() -> None:
    scores = {"a": torch.tensor([[-3.0, 1.0], [-0.5, 2.0]]), "b": torch.tensor([-2.0, -1.0, 0.5, -4.0])}
    capped = hard_masks(scores, budget=0.34)  # 8 weights: at most 2 pruned
    assert capped["a"].tolist() == [[True, False], [False, False]] and capped["b"].tolist() == [False, False, False, True]
    loose = hard_masks(scores, budget=0.9)
    assert loose["a"].tolist() == [[True, False], [True, False]] and loose["b"].tolist() == [True, True, False, True]


def test_the_temperature_anneals_from_start_to_end() -> None:
    settings = MaskLearning(temperature_start=1.0, temperature_end=0.01)
    assert temperature_at(0, 11, settings) == pytest.approx(1.0)
    assert temperature_at(5, 11, settings) == pytest.approx(0.1)
    assert temperature_at(10, 11, settings) == pytest.approx(0.01)


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, 1.5])
def test_a_budget_outside_zero_one_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\)"):
        MaskLearning(budget=budget)


def test_the_straight_through_mask_is_the_hard_one_forward_and_sigmoid_backward() -> None:
    settings = MaskLearning(form="straight-through")
    objective = MaskObjective(Objective(), [], settings, steps=10)
    scores = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))
    weight = torch.tensor([1.0, 2.0, 3.0])
    out = WeightMask(scores, objective)(weight)
    assert out.tolist() == [1.0, 0.0, 3.0]
    out.sum().backward()
    assert torch.allclose(scores.grad, weight * torch.sigmoid(scores.detach()) * (1 - torch.sigmoid(scores.detach())))


def recipe(tmp_path: Path, model: Path, method: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(f"name: t\nmodel: {model}\nconcept: {{target: golf ball, kind: object, anchor: a photo of a ball}}\n"
                    f"methods: [{method}]\ngeneration: {GENERATION}\n")
    return path


@pytest.mark.parametrize("method", [
    "{method: p-esd, params: {steps: 3, ddim_steps: 4, lr: 2.0, budget: 0.01}}",
    "{method: p-ac, params: {steps: 3, anchor_samples: 2, lr: 2.0, budget: 0.01, form: straight-through}}",
])
def test_a_learned_mask_prunes_its_default_layers_to_exact_zeros_within_the_budget(tiny: Path, tmp_path: Path,
                                                                                   method: str) -> None:
    import fnmatch

    from harness.models.pipelines import load_pipeline

    record = run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe(tmp_path, tiny, method)), None,
                                                    tmp_path / "out", RuntimeSettings(device="cpu")))
    files = UnlearnFiles(tmp_path / "out")
    tensors, masks = load_file(files.tensors), load_file(files.mask)
    before = dict(load_pipeline(str(tiny)).unet.named_parameters())
    masked = [n for n in before if any(fnmatch.fnmatch(n, p) for p in MASK_LAYERS)]
    assert sorted(tensors) == sorted(masked) and any(".attn2." in n for n in masked) and any(".ff." in n for n in masked)
    pruned = sum(int(m.sum()) for m in masks.values())
    total = sum(before[n].numel() for n in masked)
    assert 0 < pruned <= int(0.01 * total) and record.info["pruned"] == pruned == record.changed
    for name, tensor in tensors.items():
        mask = masks[name].bool()
        assert torch.all(tensor[mask] == 0)
        assert torch.equal(tensor[~mask], before[name].detach()[~mask])
    assert record.info["pruned_share"] == pytest.approx(pruned / total)


def test_the_unet_computes_with_its_own_weights_after_the_mask_is_learned(tiny: Path, method_context) -> None:
    from torch.nn.utils import parametrize

    from harness.models.pipelines import load_pipeline
    from harness.settings.generate import GenerationSettings
    from harness.settings.unlearn import ConceptSettings
    from harness.unlearn.esd import ESDObjective, ESDParams
    from harness.unlearn.learned_mask import PESDParams, learn_mask

    pipeline = load_pipeline(str(tiny))
    names = [n for n in dict(pipeline.unet.named_parameters()) if n.endswith("attn2.to_k.weight")]
    settings = PESDParams(steps=2, ddim_steps=4)
    context = method_context(pipeline, ConceptSettings(target="golf ball", kind="object"), names,
                             GenerationSettings(steps=3, height=64, width=64), scratch=Path(tiny).parent / "scratch",
                             settings_key="k")
    result = learn_mask(context, ESDObjective(["a golf ball"], ESDParams(ddim_steps=4), 1), settings, {})
    assert not any(parametrize.is_parametrized(m) for m in pipeline.unet.modules())
    assert set(result.tensors) == set(names)
