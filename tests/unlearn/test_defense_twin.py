"""A defended method entry reuses its finished undefended twin's weights and masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from harness.layout import UnlearnFiles
from harness.models.checkpoints import load_tensor_file
from harness.models.pipelines import load_pipeline
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.settings.unlearn import DefenseSettings
from harness.unlearn.defense import obfuscate
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning


def _jobs(folder: Path, save_tiny_sd_pipeline) -> tuple[UnlearnJob, UnlearnJob]:
    """ConceptPrune on a tiny SD pipeline, and the same entry under the Gaussian defense."""
    path = folder / "r.yaml"
    path.write_text(f"name: tiny\nmodel: {save_tiny_sd_pipeline(folder / 'pipe')}\n"
                    "concept: {target: seven, kind: digit}\n"
                    "methods: [{method: conceptprune, params: {skill_ratio: 0.05, tau: 2}}]\n"
                    "generation: {steps: 3, height: 64, width: 64, batch_size: 12}\n")
    recipe = load_recipe(path)
    runs = folder / "run" / "unlearn"
    plain = recipe.methods[0]
    defended = dataclasses.replace(plain, name="cp-defended", defense=DefenseSettings(sigma=0.01, seed=3))
    recipe = dataclasses.replace(recipe, methods=[plain, defended])
    return (UnlearnJob.from_recipe(recipe, plain.name, runs / "conceptprune", RuntimeSettings()),
            UnlearnJob.from_recipe(recipe, "cp-defended", runs / "cp-defended", RuntimeSettings()))


def test_defended_twin_takes_the_finished_masks_and_obfuscates_them(tmp_path: Path, save_tiny_sd_pipeline) -> None:
    plain_job, defended_job = _jobs(tmp_path, save_tiny_sd_pipeline)
    plain = run_unlearning(plain_job)
    defended = run_unlearning(defended_job)
    assert defended.info["reused_from"] == str(UnlearnFiles(plain_job.out).folder)
    masks = {n: m.bool() for n, m in load_tensor_file(UnlearnFiles(plain_job.out).mask).items()}
    assert {n: m.bool() for n, m in load_tensor_file(UnlearnFiles(defended_job.out).mask).items()}.keys() == masks.keys()
    saved = load_tensor_file(UnlearnFiles(plain_job.out).tensors)
    model_order = [n for n, _ in load_pipeline(plain_job.model).unet.named_parameters() if n in masks]  # draw order
    expected = obfuscate({n: saved[n] for n in model_order}, masks, 0.01, 3)
    got = load_tensor_file(UnlearnFiles(defended_job.out).tensors)
    assert all(torch.equal(got[n], expected[n]) for n in masks) and defended.changed == plain.changed

    # without the twin (another run directory) the method runs again and gives the same weights
    alone = dataclasses.replace(defended_job, out=tmp_path / "alone" / "unlearn" / "cp-defended")
    record = run_unlearning(alone)
    assert "reused_from" not in record.info
    again = load_tensor_file(UnlearnFiles(alone.out).tensors)
    assert all(torch.equal(again[n], got[n]) for n in masks)


def test_a_twin_with_other_params_is_not_taken(tmp_path: Path, save_tiny_sd_pipeline) -> None:
    plain_job, defended_job = _jobs(tmp_path, save_tiny_sd_pipeline)
    run_unlearning(dataclasses.replace(plain_job, method=dataclasses.replace(
        plain_job.method, params=plain_job.method.params | {"skill_ratio": 0.1})))
    assert "reused_from" not in run_unlearning(defended_job).info
