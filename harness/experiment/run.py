"""The Python entry point: one recipe's matrix, or one piece of one stage, as `harness benchmark`
runs it (the command line and the tests both call `run_benchmark`; `harness.run` is its public name).

    import harness
    results = harness.run("digits-matrix-quick", "runs/quick")
    for row in results.rows: ...
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import HarnessError
from harness.experiment import stages
from harness.experiment.lanes import run_in_lanes
from harness.experiment.plan import STAGES, Plan, build_plan
from harness.experiment.preflight import check_inputs
from harness.layout import is_run_dir
from harness.log import log_to_file
from harness.outputs import check_output
from harness.recipe import Recipe, load_recipe
from harness.records import Results
from harness.runtime import RuntimeSettings

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Which part of the recipe's plan to run (every field: all of it)."""

    stage: Literal["unlearn", "attack", "generate", "score", "report", "all"] = "all"
    """run one stage (default: all, in order)"""
    method: str | None = None
    """unlearn/attack/generate/score: only this method"""
    attack: str | None = None
    """attack/generate/score: only this attack"""
    model: str | None = None
    """generate/score: only this model (pretrained, METHOD, METHOD/ATTACK)"""
    suite: str | None = None
    """generate/score: only this suite"""
    shard: int | None = None
    """generate: only this shard (a SLURM array task)"""


def plan_for(recipe: str | Path | Recipe, run_dir: str | Path | None = None, fidelity: str | None = None,
             runtime: RuntimeSettings | None = None, limit: int | None = None) -> Plan:
    """The plan of a recipe (a file, a shipped recipe's name, or a loaded Recipe) in `run_dir`
    (default runs/<recipe name>); `limit` makes it a pilot on the first N prompts of every suite."""
    loaded = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if fidelity:
        loaded = dataclasses.replace(loaded, fidelity=fidelity)
    if limit is not None:
        if limit < 1:
            raise HarnessError(f"--limit: must be at least 1, got {limit}")
        loaded = dataclasses.replace(loaded, limit=limit)
    return build_plan(loaded, Path(run_dir or Path("runs") / loaded.name), runtime)


def run_benchmark(plan: Plan, selection: Selection | None = None, workers: int = 1) -> Results | None:
    """Carry out the selected stage(s) of the plan; the results when the report stage ran. A whole
    run (every stage, nothing selected) with `workers` > 1 spreads its stages over that many
    processes (harness.experiment.lanes)."""
    selection = selection or Selection()
    recipe = plan.recipe
    methods, attacks = _methods_and_attacks(plan, selection)
    if selection.suite and selection.suite not in plan.suites:
        raise HarnessError(f"--suite '{selection.suite}' is not in this plan (choose from {', '.join(plan.suites)})")
    if selection.shard is not None and (selection.stage != "generate" or (selection.suite is None and len(plan.suites) != 1)):
        raise HarnessError("--shard needs --stage generate and one --suite")
    selected = STAGES if selection.stage == "all" else (selection.stage,)
    check_inputs(plan, selected, methods, attacks)
    check_output(plan.run_dir, "--run-dir", is_run_dir)
    stages.check_limit(plan)
    stages.copy_recipe(plan)
    results = None
    with log_to_file(plan.layout.log):
        log.info("run %s: %d methods x %d attacks x %d suites -> %s", recipe.name, len(recipe.methods),
                 len(recipe.attacks), len(plan.suites), plan.run_dir)
        if workers > 1 and selection == Selection():
            run_in_lanes(plan, workers, run_stage)
        else:
            _run_stages(plan, selection, [s for s in selected if s != "report"])
        if "report" in selected:
            results = stages.report(plan)
    return results


def run_stage(plan: Plan, stage: str, selection: dict[str, str]) -> None:
    """One stage of one selection (`method` or `model`), without the whole run's checks and first
    line: a task of a worker process (harness.experiment.lanes)."""
    with log_to_file(plan.layout.log):
        _run_stages(plan, Selection(stage=stage, **selection), [stage])  # type: ignore[arg-type]


def _methods_and_attacks(plan: Plan, selection: Selection) -> tuple[list[str], list[str]]:
    recipe = plan.recipe
    methods = [recipe.method(selection.method)[1].name] if selection.method else [m.name for m in recipe.methods]
    attacks = [recipe.attack(selection.attack)[1].name] if selection.attack else [a.name for a in recipe.attacks]
    return methods, attacks


def _run_stages(plan: Plan, selection: Selection, selected: list[str]) -> None:
    """The unlearn, attack, generate and score stages among `selected`, for the selection."""
    methods, attacks = _methods_and_attacks(plan, selection)
    models = [m for m in plan.pick_models(selection.model) if m.method in [*methods, "pretrained"]
              and (m.attack in [*attacks, "none"])]
    suites = [selection.suite] if selection.suite else plan.suites
    if "unlearn" in selected:
        stages.unlearn(plan, methods)
    if "attack" in selected:
        stages.attack(plan, [(m, a) for m, a in plan.recipe.pairs() if m in methods and a in attacks])
    for stage in ("generate", "score"):
        if stage in selected:
            every = stages.with_snapshots(plan, models)
            for model in every:
                for suite in suites:
                    if stage == "generate":
                        stages.generate(plan, model, suite, selection.shard)
                    else:
                        stages.score(plan, model, suite)
            if selection.model is None:
                log.info("%s: %d models x %d suites done", stage, len(every), len(suites))


def run(recipe: str | Path | Recipe, run_dir: str | Path | None = None, *,
        stage: Literal["unlearn", "attack", "generate", "score", "report", "all"] = "all",
        method: str | None = None, attack: str | None = None, model: str | None = None, suite: str | None = None,
        shard: int | None = None, fidelity: str | None = None, runtime: RuntimeSettings | None = None,
        limit: int | None = None, workers: int = 1) -> Results | None:
    """Run a recipe (a file, a shipped recipe's name, or a Recipe) into `run_dir` as
    `harness benchmark` does, all of it or the selected part (see Selection), a whole run over
    `workers` processes when more than 1. Returns the results when the report stage ran (the
    default runs every stage)."""
    selection = Selection(stage=stage, method=method, attack=attack, model=model, suite=suite, shard=shard)
    return run_benchmark(plan_for(recipe, run_dir, fidelity, runtime, limit), selection, workers)
