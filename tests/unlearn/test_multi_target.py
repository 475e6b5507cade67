"""Several concepts erased at once: the recipe lists them, a pruning method runs once per target
and the masks unite; other methods refuse; results pool the erased classes and keep each one's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.layout import UnlearnFiles
from harness.models.checkpoints import load_tensor_file
from harness.recipe import load_recipe
from harness.records import ScoreResult
from harness.registry import Plugin
from harness.report.results import per_concept
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.run import apply_method
from harness.unlearn.run import run as run_unlearning

RECIPE = """\
name: two-at-once
model: {model}
concept: {{target: {target}, kind: object}}
methods:
  - method: {method}
    params: {params}
generation: {{steps: 9, height: 64, width: 64, batch_size: 12, guidance: 7.5, scheduler: PNDMScheduler}}
suites: [digits-all-10]
"""


def write_recipe(path: Path, model: str, target: str, method: str = "conceptprune",
                 params: str = "{skill_ratio: 0.05, tau: 3, seed: 0}") -> Path:
    path.write_text(RECIPE.format(model=model, target=target, method=method, params=params))
    return path


def test_a_concept_lists_several_targets_and_refuses_repeats() -> None:
    concept = ConceptSettings(target=["seven", "three"], kind="digit")
    assert concept.several and concept.targets == ["seven", "three"] and concept.label == "seven + three"
    assert [c.target for c in concept.each()] == ["seven", "three"]
    assert not ConceptSettings(target="seven", kind="digit").several
    with pytest.raises(ValueError, match="twice"):
        ConceptSettings(target=["seven", "seven"], kind="digit")
    with pytest.raises(ValueError, match="empty"):
        ConceptSettings(target=[], kind="digit")


def test_the_united_mask_is_the_union_of_the_single_target_masks(tmp_path: Path, shared_data: Path,
                                                                 save_tiny_sd_pipeline) -> None:
    model = str(save_tiny_sd_pipeline(tmp_path / "pipe"))
    masks = {}
    for label, target in (("golf", "golf ball"), ("church", "church"), ("both", "[golf ball, church]")):
        recipe = load_recipe(write_recipe(tmp_path / f"{label}.yaml", model, target))
        record = run_unlearning(UnlearnJob.from_recipe(recipe, None, tmp_path / label, RuntimeSettings(data_dir=str(shared_data))))
        masks[label] = {n: m.bool() for n, m in load_tensor_file(UnlearnFiles(tmp_path / label).mask).items()}
        if label == "both":
            assert set(record.info["targets"]) == {"golf ball", "church"}
            assert record.concept["target"] == ["golf ball", "church"]
    assert masks["both"].keys() == masks["golf"].keys()
    for name, united in masks["both"].items():
        assert torch.equal(united, masks["golf"][name] | masks["church"][name]), name
    golf_only = sum(int((masks["golf"][n] & ~masks["church"][n]).sum()) for n in masks["golf"])
    assert golf_only > 0  # the two concepts do not prune the same weights
    tensors = load_tensor_file(UnlearnFiles(tmp_path / "both").tensors)
    assert all(bool((tensors[n][m] == 0).all()) for n, m in masks["both"].items())


def test_a_method_that_does_more_than_zero_weights_refuses_several_targets(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"methods\[0\]\.method: esd erases one concept at a time"):
        load_recipe(write_recipe(tmp_path / "esd.yaml", "zoo:digits", "[seven, three]", "esd", "{steps: 1}"))


def test_united_results_must_be_zeroed_weights_only(method_context) -> None:
    """A method that claims to prune but changes a weight otherwise is caught, naming the target."""
    weight = torch.nn.Parameter(torch.ones(2, 2))

    def fake(context: UnlearnContext, params: dict) -> UnlearnResult:
        mask = torch.tensor([[True, False], [False, False]])
        changed = torch.ones(2, 2).masked_fill(mask, 0)
        if context.concept.target == "three":
            changed[1, 1] = 5.0
        return UnlearnResult(masks={"w": mask}, tensors={"w": changed})

    plugin = Plugin(kind="method", name="fake", target=fake, prunes=True)
    context = method_context(None, ConceptSettings(["seven", "three"], "digit"), ["w"], GenerationSettings())
    with pytest.raises(HarnessError, match="for 'three' it changes 'w' beyond zeroing"):
        apply_method(plugin, context, {}, {"w": weight})
    fine = context.for_concept(ConceptSettings(["seven", "four"], "digit"))
    result = apply_method(plugin, fine, {}, {"w": weight})
    assert result.tensors["w"].tolist() == [[0.0, 1.0], [1.0, 1.0]]


def test_results_pool_the_erased_classes_and_keep_each_ones_accuracy() -> None:
    counts_per_class = {"seven": [1, 10], "three": [3, 10], "one": [9, 10], "two": [8, 10]}
    score = ScoreResult(key="k", model="m", suite="s", count=40, config={}, seeds={}, provenance={},
                        metrics={"accuracy_counts_per_class": counts_per_class})
    counts = score.class_counts(["seven", "three"])
    assert counts.erased == (4, 20) and counts.preserved == (17, 20)
    each = per_concept(score, ["seven", "three"])
    assert each["seven"]["accuracy"] == 0.1 and each["three"]["n"] == 10
    low, high = each["three"]["ci"]
    assert low < 0.3 < high
