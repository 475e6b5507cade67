"""The shipped world carries the paper's story: ConceptPrune erases one digit and spares the
others, and the attack (SoftImpute, Top-K signs, Neuron-Max Scaling) brings it back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.experiment.plan import build_plan
from harness.experiment.stages import attack, unlearn
from harness.models.pipelines import apply_tensors, load_pipeline
from harness.recipe import Recipe, load_recipe
from harness.runtime import RuntimeSettings
from harness.worlds.digits.classifier import load_classifier
from harness.worlds.digits.data import concept_prompts
from harness.worlds.digits.store import ensure_world

TARGET_IMAGES, OTHER_IMAGES = 10, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_world(tmp_path_factory.mktemp("cache"))


@torch.no_grad()
def digit_shares(pipeline, classifier, recipe: Recipe, target: int) -> list[float]:
    """Per digit, the share of its first prompt's images (fixed seeds) the classifier calls that digit."""
    counts = [TARGET_IMAGES if d == target else OTHER_IMAGES for d in range(10)]
    labels = torch.tensor([d for d in range(10) for _ in range(counts[d])])
    images = pipeline(
        [concept_prompts(int(d))[0] for d in labels],
        num_inference_steps=recipe.generation.steps,
        guidance_scale=recipe.generation.guidance,
        generator=[torch.Generator().manual_seed(100 + i) for i in range(len(labels))],
        output_type="pt",
    ).images
    hits = (classifier(images).argmax(1) == labels).float()
    return [hits[labels == d].mean().item() for d in range(10)]


def unlearned_and_revived(recipe: Recipe, out: Path) -> tuple[dict, dict]:
    """Run the recipe's unlearning and its NMS attack; the changed tensors of each."""
    plan = build_plan(recipe, out, RuntimeSettings(device="cpu"))
    unlearn(plan, ["conceptprune"])
    attack(plan, [("conceptprune", "nms")])
    return (load_file(plan.layout.unlearn("conceptprune").tensors),
            load_file(plan.layout.attack("conceptprune", "nms").tensors))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_conceptprune_erases_seven_alone_and_the_attack_revives_it(world, tmp_path, monkeypatch, recipes_dir) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(world.parent.parent))
    recipe = load_recipe(recipes_dir / "digits-revival.yaml")
    assert recipe.concept.target == "seven"
    unlearned, revived = unlearned_and_revived(recipe, tmp_path)
    pipeline = load_pipeline(recipe.model)
    classifier = load_classifier(world).eval()

    pretrained = digit_shares(pipeline, classifier, recipe, target=7)
    apply_tensors(pipeline, unlearned)
    erased = digit_shares(pipeline, classifier, recipe, target=7)
    apply_tensors(pipeline, revived)
    came_back = digit_shares(pipeline, classifier, recipe, target=7)

    others = [d for d in range(10) if d != 7]
    assert pretrained[7] >= 0.9
    assert erased[7] <= pretrained[7] / 4
    assert sum(erased[d] for d in others) >= 0.85 * sum(pretrained[d] for d in others)
    assert came_back[7] >= 0.5
