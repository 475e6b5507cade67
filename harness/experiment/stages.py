"""The stages of one recipe's experiment, each a job from the plan given to its stage's `run`,
reading and writing files of the run directory.

Every stage skips work whose output is complete for its settings (the stages themselves check),
so a rerun after a crash, or a SLURM array task whose shard exists, costs next to nothing.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from pathlib import Path

from accelerate import Accelerator

from harness.atomic import atomic_path
from harness.config import load_yaml
from harness.errors import HarnessError
from harness.experiment.plan import Plan
from harness.layout import NO_ATTACK, PRETRAINED, ModelRef
from harness.records import AttackRecord, Results, read_record

log = logging.getLogger(__name__)


def copy_recipe(plan: Plan) -> None:
    """Keep the recipe beside its results (atomically: array tasks may do it at once); a pilot's
    `--limit N` is written into the copy, so the report and results.json say so."""
    target = plan.layout.recipe
    target.parent.mkdir(parents=True, exist_ok=True)
    source = Path(plan.recipe.source)
    text = recipe_text(source, plan.recipe.limit)
    if target.is_file() and (target.samefile(source) or target.read_bytes() == text.encode()):
        return
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def recipe_text(source: Path, limit: int | None) -> str:
    """The recipe file's text, with its top-level `limit` set to `limit` where they differ."""
    text = source.read_text()
    if (load_yaml(source) or {}).get("limit") == limit:
        return text
    text = re.sub(r"(?m)^limit:.*(\n|$)", "", text).rstrip("\n") + "\n"
    return text + (f"limit: {limit}  # harness benchmark --limit: a pilot on the first {limit} prompts of every suite\n"
                   if limit is not None else "")


def check_limit(plan: Plan) -> None:
    """A run directory holds one kind of run: a pilot's (`--limit N`) never resumes as another's."""
    previous = plan.layout.recipe
    if not previous.is_file():
        return
    try:
        before = (load_yaml(previous) or {}).get("limit")
    except HarnessError:
        return
    if before != plan.recipe.limit:
        said = f"with --limit {before}" if before is not None else "without --limit"
        asked = f"--limit {plan.recipe.limit}" if plan.recipe.limit is not None else "no --limit"
        raise HarnessError(f"--run-dir {plan.run_dir} holds a run made {said}; this one asks for {asked} "
                           "(give it another --run-dir)")


def made_since(provenance: dict, started: float) -> bool:
    """Whether a record was made by this run (not an output reused from before it)."""
    created = datetime.datetime.fromisoformat(provenance["created"]).timestamp()
    return created >= int(started)


def unlearn(plan: Plan, methods: list[str]) -> None:
    """Each method's unlearning (a method whose output is complete for its settings is skipped)."""
    from harness.unlearn import run as stage

    for method in methods:
        started = time.time()
        record = stage.run(plan.unlearn_job(method))
        if made_since(record.provenance, started):
            log.info("unlearn %s: %d weights changed (%.3f%% of the target layers), %.1f s", method, record.changed,
                     100 * record.fraction_of_layers, record.seconds)


def attack(plan: Plan, pairs: list[tuple[str, str]], accelerator: Accelerator | None = None) -> None:
    """Each (method, attack) pair's attack (sharded over Accelerate processes where it declares so)."""
    from harness.attack import run as stage
    from harness.attack.revival.runner import make_accelerator

    accelerator = accelerator or make_accelerator(plan.runtime.device)
    for method, name in pairs:
        started = time.time()
        record = stage.run(plan.attack_job(method, name), accelerator)
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


def generate(plan: Plan, model: ModelRef, suite: str, shard: int | None) -> None:
    """Images of one suite with one model (one shard when given), as WebDataset shards."""
    from harness.generate import run as stage

    if not attacked_model_applies(plan, model):
        log.debug("generate %s: the attack did not apply; nothing to generate", model)
        return
    stage.run(plan.generate_job(model, suite, shard))


def score(plan: Plan, model: ModelRef, suite: str) -> None:
    """The suite's metrics for one model's images."""
    from harness.score import run as stage

    if attacked_model_applies(plan, model):
        stage.run(plan.score_job(model, suite))


def report(plan: Plan) -> Results:
    """results.json, tables, plots and grids of the run; returns the results."""
    from harness.report import run as stage

    stage.run(plan.report_job())
    return read_record(Results, plan.layout.results)
