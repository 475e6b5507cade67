"""The stages of one recipe's experiment, each reading and writing files of the run directory.

Every stage skips work whose output is complete for its settings (the stages themselves check),
so a rerun after a crash, or a SLURM array task whose shard exists, costs next to nothing.
"""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

from accelerate import Accelerator

from harness.atomic import atomic_copy
from harness.attack.run import run_attack
from harness.experiment.plan import Plan
from harness.generate.rewrite import PromptRewrite, prompt_changes
from harness.layout import NO_ATTACK, PRETRAINED, PRETRAINED_MODEL, ModelRef
from harness.records import AttackRecord, Results, read_record
from harness.recipe import Recipe
from harness.runtime import RuntimeSettings

log = logging.getLogger(__name__)


def copy_recipe(recipe: Recipe, plan: Plan) -> None:
    """Keep the recipe beside its results (atomically: array tasks may do it at once)."""
    target = plan.layout.recipe
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(recipe.source)
    if target.is_file() and (target.samefile(source) or target.read_bytes() == source.read_bytes()):
        return
    atomic_copy(source, target)


def made_since(provenance: dict, started: float) -> bool:
    """Whether a record was made by this run (not an output reused from before it)."""
    created = datetime.datetime.fromisoformat(provenance["created"]).timestamp()
    return created >= int(started)


def unlearn(plan: Plan, methods: list[str], runtime: RuntimeSettings) -> None:
    """Each method's unlearning (a method whose output is complete for its settings is skipped)."""
    from harness.unlearn.run import run_unlearning

    for method in methods:
        started = time.time()
        record = run_unlearning(plan.unlearn_job(method, runtime))
        if made_since(record.provenance, started):
            log.info("unlearn %s: %d weights changed (%.3f%% of the target layers), %.1f s", method, record.changed,
                     100 * record.fraction_of_layers, record.seconds)


def attack(plan: Plan, pairs: list[tuple[str, str]], runtime: RuntimeSettings,
           accelerator: Accelerator | None = None) -> None:
    """Each (method, attack) pair's attack (sharded over Accelerate processes where it declares so)."""
    from harness.attack.revival.runner import make_accelerator

    accelerator = accelerator or make_accelerator(runtime.device)
    for method, name in pairs:
        started = time.time()
        record = run_attack(plan.attack_job(method, name, runtime), accelerator)
        if record is not None and made_since(record.provenance, started):
            summary = f"not applicable ({record.reason})" if not record.applicable else f"{record.seconds:.1f} s"
            if record.revival is not None and record.revival.summary.sign_accuracy is not None:
                summary += f", sign accuracy {record.revival.summary.sign_accuracy:.3f}"
            log.info("attack %s on %s: %s", name, method, summary)


def attacked_model_applies(plan: Plan, model: ModelRef) -> bool:
    """Whether `model` exists to generate with: not an attack that did not apply."""
    if model.method == PRETRAINED or model.attack == NO_ATTACK:
        return True
    path = plan.layout.attack(model.method, model.attack).record
    return not path.is_file() or read_record(AttackRecord, path).applicable


def with_snapshots(plan: Plan, models: list[ModelRef]) -> list[ModelRef]:
    """The models and, after each training attack, the snapshots of its recovery curve."""
    from harness.report.results import snapshot_models

    return [m for model in models for m in (model, *snapshot_models(plan.layout, model))]


def generate(plan: Plan, model: ModelRef, suite_name: str, shard: int | None, runtime: RuntimeSettings) -> None:
    """Images of one suite with one model (one shard when given), as WebDataset shards."""
    from harness.generate.run import generate_suite
    from harness.generate.suites import load_suite

    if not attacked_model_applies(plan, model):
        log.debug("generate %s: the attack did not apply; nothing to generate", model)
        return
    suite = load_suite(suite_name, runtime.data_dir, f"{plan.recipe.source}: suites")
    tokens, rewrite = prompt_attack(plan, model)
    generate_suite(plan.recipe.model, plan.layout.model_tensors(model), suite, plan.recipe.generation,
                   plan.layout.images(model, suite_name).folder, model.label, shard=shard, runtime=runtime,
                   tokens=tokens, rewrite=rewrite)


def prompt_attack(plan: Plan, model: ModelRef) -> tuple[Path | None, PromptRewrite | None]:
    """A prompt-space attack's new tokens file and prompt rewrite for `model` (None, None for others)."""
    if model.method == PRETRAINED or model.attack == NO_ATTACK:
        return None, None
    return prompt_changes(plan.layout.attack(model.method, model.attack).folder)


def score(plan: Plan, model: ModelRef, suite_name: str, runtime: RuntimeSettings) -> None:
    """The suite's metrics for one model's images; the CLIP score compares with the pretrained model."""
    from harness.generate.suites import load_suite
    from harness.score.run import score_suite

    if not attacked_model_applies(plan, model):
        return
    suite = load_suite(suite_name, runtime.data_dir, f"{plan.recipe.source}: suites")
    reference = plan.layout.images(PRETRAINED_MODEL, suite_name).folder if model != PRETRAINED_MODEL else None
    score_suite(plan.layout.images(model, suite_name).folder, suite, list(suite.metrics),
                plan.layout.metrics(model, suite_name), reference=reference, settings=plan.recipe.score, runtime=runtime)


def report(plan: Plan) -> Results:
    """results.json, tables, plots and grids of the run; returns the results."""
    from harness.report.run import write_report

    write_report([plan.run_dir], plan.layout.report.folder)
    return read_record(Results, plan.layout.results)
