"""DiMRA as the paper sets it: a budget in passes over the attacker's data, the model's own
prompt dropout in the loss, and generated attacker data without the erased concept."""

from __future__ import annotations

import pytest
import torch

import harness.score.metrics.classifiers as classifiers
from harness.attack.relearn import DenoisingObjective, DiMRAParams
from harness.budgets import budget_record
from harness.registry import resolve
from harness.settings.generate import GenerationSettings
from harness.train.data import DataSpec, TrainingSet, build_set


def parse(params: dict) -> DiMRAParams:
    return resolve("attack", "dimra").parse(params)


def test_the_published_budget_is_fifty_passes_and_steps_named_by_a_recipe_replace_it() -> None:
    published = parse({})
    assert (published.passes, published.curve_every_passes) == (50.0, 5.0)
    steps = published.in_steps(1293)  # the world's other nine digits, batch 4
    assert (steps.steps, steps.curve_every) == (16163, 1617) and steps.checkpoint_every == 50
    named = parse({"steps": 300, "lr": 1e-4})
    assert named.passes is None and named.in_steps(1293).steps == 300 and named.curve_every_passes == 5.0
    quick = parse({"budget": "quick"})
    assert (quick.steps, quick.curve_every, quick.passes) == (200, 100, None)
    record = budget_record(quick.in_steps(1293), published_steps=steps.steps, data_size=1293)
    assert record["passes"] == pytest.approx(0.619, abs=1e-3) and record["published_passes"] == pytest.approx(50.0, abs=0.01)
    assert not record["at_published_strength"] and record["label"] == "quick"
    full = budget_record(steps, published_steps=steps.steps, data_size=1293)
    assert full["at_published_strength"] and full["label"] == "published"


def test_the_loss_drops_captions_as_the_model_was_pretrained() -> None:
    data = TrainingSet(torch.zeros(10, 1, 4, 4), [f"digit {i}" for i in range(10)], [None] * 10, "test")
    objective = DenoisingObjective(data, 4, dropout=0.1, neutral=0.1, neutral_prompts=("a digit", "a number"))
    generator = torch.Generator().manual_seed(0)
    captions = [c for _ in range(1000) for c in objective.captions(list(range(10)), generator)]
    empty = captions.count("") / len(captions)
    neutral = sum(c in ("a digit", "a number") for c in captions) / len(captions)
    assert 0.09 < empty < 0.11 and 0.09 < neutral < 0.11
    kept = [(c, i % 10) for i, c in enumerate(captions) if c.startswith("digit")]
    assert all(c == f"digit {i}" for c, i in kept)  # a caption is its own sample's or dropped, never another's
    no_neutral = DenoisingObjective(data, 4, dropout=0.1, neutral=0.1)  # a model without neutral prompts
    assert no_neutral.neutral == 0.0


class FirstIsTheConcept(torch.nn.Module):
    class_names = ["golf ball", "cat"]

    def predict(self, images: torch.Tensor) -> list[str]:
        return ["golf ball"] + ["cat"] * (len(images) - 1)


def test_generated_attacker_data_loses_what_the_classifier_sees_as_the_concept(
        tiny_sd_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifiers, "load_image_classifier", lambda name, weights: FirstIsTheConcept())
    spec = DataSpec(source="prompts", prompts=["a photo of a thing", "a cat", "a dog"])
    found = build_set(tiny_sd_pipeline(), spec, GenerationSettings(steps=2, height=64, width=64), "/models/sd", 0,
                      ["golf ball"], kind="object")
    assert found.dropped == 1 and found.prompts == ["a cat", "a dog"] and len(found.inputs) == 2
    kept_all = build_set(tiny_sd_pipeline(), DataSpec(source="prompts", prompts=["a cat"], concept_filter="none"),
                         GenerationSettings(steps=2, height=64, width=64), "/models/sd", 0, ["golf ball"], kind="object")
    assert kept_all.dropped == 0 and len(kept_all.inputs) == 1


def test_world_prompts_are_the_neutral_and_other_digits_prompts_as_many_as_the_real_images() -> None:
    from harness.train.data import _world_prompts
    from harness.world import world_named

    world = world_named("digits")
    prompts = _world_prompts("zoo:digits", DataSpec(source="world-prompts"), ["seven"])
    real = world.labelled_images("train", 8)[1]
    assert len(prompts) == sum(label != "seven" for label in real)
    assert not any("seven" in p or "7" in p.split() for p in prompts)
    assert set(world.neutral_prompts()) <= set(prompts)
    assert set(world.label_prompts("three")) <= set(prompts)
    assert len(_world_prompts("zoo:digits", DataSpec(source="world-prompts", count=5), ["seven"])) == 5


def test_samples_drawn_by_an_unchanged_model_are_made_once(tiny_sd_pipeline, save_tiny_sd_pipeline, tmp_path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """DiMRA's D_au is the pretrained model's: every cell after the first takes it from the cache."""
    import harness.models.pipelines as pipelines
    from harness.cache import CACHE_ENV
    from harness.train.data import generated_set

    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))

    model = str(save_tiny_sd_pipeline(tmp_path / "pipe"))
    made = []
    real = pipelines.model_samples
    monkeypatch.setattr(pipelines, "model_samples", lambda *a, **k: made.append(a[1]) or real(*a, **k))
    settings = GenerationSettings(steps=2, height=64, width=64)
    first = generated_set(tiny_sd_pipeline(), ["a cat", "a dog"], settings, 0, "test", cached_as=model)
    again = generated_set(tiny_sd_pipeline(), ["a cat", "a dog"], settings, 0, "test", cached_as=model)
    assert made == [["a cat", "a dog"]] and torch.equal(first.inputs, again.inputs)
    generated_set(tiny_sd_pipeline(), ["a cat", "a dog"], settings, 1, "test", cached_as=model)  # another seed
    generated_set(tiny_sd_pipeline(), ["a cat"], settings, 0, "test", cached_as=model)  # other prompts
    generated_set(tiny_sd_pipeline(), ["a cat", "a dog"], settings, 0, "test")  # not cached: an unlearned model
    assert len(made) == 4 and len(list((cache / "samples").glob("*.safetensors"))) == 3
