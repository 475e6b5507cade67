"""The stages of one recipe's benchmark, each reading and writing files of the run directory.

Every stage skips work whose output is already complete, so a rerun after a crash, or a SLURM
array task whose shard exists, costs next to nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from accelerate import Accelerator

from harness.experiment.plan import PRETRAINED, Plan
from harness.recipe import Recipe

log = logging.getLogger(__name__)


def copy_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Keep the recipe beside its results (atomically: array tasks may do it at once)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "recipe.yaml"
    if recipe.source and Path(recipe.source).resolve() != target.resolve():
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".recipe.", suffix=".tmp")
        os.close(fd)
        shutil.copyfile(recipe.source, tmp)
        os.replace(tmp, target)


def unlearn(plan: Plan, data_dir: str | Path | None, device: str) -> None:
    """The recipe's unlearning method (skipped when its record exists or the recipe has none)."""
    from harness.unlearn.run import RECORD_FILE, run_unlearning

    if plan.recipe.unlearn is None:
        log.info("recipe has no unlearn section: attacking %s as given", plan.unlearned_tensors)
        return
    if (plan.unlearn_dir / RECORD_FILE).is_file():
        log.info("unlearning already done: %s", plan.unlearn_dir)
        return
    run_unlearning(plan.recipe, plan.unlearn_dir, data_dir=data_dir, device=device)


def revive(plan: Plan, variants: list[str] | None = None, accelerator: Accelerator | None = None) -> None:
    """Each variant's revival (sharded over Accelerate processes when launched that way)."""
    from harness.attack.runner import run_revival

    accelerator = accelerator or Accelerator()
    for name in variants or list(plan.variants):
        if (plan.revive_dir(name) / "report.json").is_file():
            log.info("revival '%s' already done", name)
            continue
        log.info("revival '%s'", name)
        run_revival(plan.variants[name], accelerator)


def generate(plan: Plan, model: str, suite_name: str, shard: int | None, data_dir: str | Path | None,
             accelerator: str = "auto", devices: int | str = 1) -> None:
    """Images of one suite with one model (one shard when given), as WebDataset shards."""
    from harness.eval.generate import generate_suite
    from harness.eval.suites import load_suite

    suite = load_suite(suite_name, data_dir)
    generate_suite(plan.recipe.model, [str(p) for p in plan.model_tensors(model)], suite, plan.recipe.generation,
                   plan.images_dir(model, suite_name), model, shard=shard, devices=devices, accelerator=accelerator)


def score(plan: Plan, model: str, suite_name: str, data_dir: str | Path | None,
          accelerator: str = "auto", devices: int | str = 1) -> None:
    """The suite's metrics for one model's images; the CLIP score compares with the pretrained model."""
    from harness.eval.score import score_suite
    from harness.eval.suites import load_suite

    if plan.metrics_path(model, suite_name).is_file():
        log.info("metrics of %s on %s already written", model, suite_name)
        return
    suite = load_suite(suite_name, data_dir)
    reference = plan.images_dir(PRETRAINED, suite_name) if model != PRETRAINED else None
    score_suite(plan.images_dir(model, suite_name), suite, list(suite.metrics), plan.metrics_path(model, suite_name),
                reference=reference, accelerator=accelerator, devices=devices)


def report(plan: Plan) -> Path:
    """Tables, plots and grids of the run."""
    from harness.eval.report import write_report

    return write_report([plan.run_dir], plan.report_dir).parent
