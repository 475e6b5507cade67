"""`harness benchmark [RECIPE]`: a recipe's whole matrix, or one piece of one stage.

With no recipe it runs the embedded default (the miniature world's benchmark, a recipe shipped
in the package) and prints the matrix's table. SLURM jobs call it with `--stage` and `--shard`.
The console shows one line per stage and progress bars; the run directory's log holds the detail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.config import settings_arguments, settings_from_arguments
from harness.errors import HarnessError
from harness.experiment import stages
from harness.experiment.plan import STAGES, build_plan
from harness.experiment.summary import print_summary
from harness.log import log_to_file
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "digits-matrix-quick"
"""The embedded default: a recipe shipped in the package."""


@dataclass
class BenchmarkOptions:
    """What to run of the recipe's plan."""

    run_dir: str | None = None
    """run directory (default runs/<recipe name>)"""
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
    list_jobs: bool = False
    """print the plan as JSON and exit"""
    fidelity: Literal["paper", "reference-code"] | None = None
    """override the recipe's fidelity: paper, or reference-code (the authors' published code's behaviour)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; all of them are optional for the embedded default."""
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                        help=f"recipe YAML, or a shipped recipe's name (default: {DEFAULT_RECIPE})")
    parser.set_defaults(_flags=settings_arguments(parser, BenchmarkOptions),
                        _runtime=settings_arguments(parser, RuntimeSettings))


def run(args: argparse.Namespace) -> int:
    """Carry out the selected stage(s) of the recipe's plan."""
    options = settings_from_arguments(BenchmarkOptions, args, args._flags)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    recipe = load_recipe(args.recipe)
    if options.fidelity:
        recipe = dataclasses.replace(recipe, fidelity=options.fidelity)
    run_dir = Path(options.run_dir or Path("runs") / recipe.name)
    plan = build_plan(recipe, run_dir, runtime.data_dir)
    if options.list_jobs:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    methods = [recipe.method(options.method).name] if options.method else [m.name for m in recipe.methods]
    attacks = [recipe.attack(options.attack).name] if options.attack else [a.name for a in recipe.attacks]
    models = [m for m in plan.pick_models(options.model) if m.method in [*methods, "pretrained"]
              and (m.attack in [*attacks, "none"])]
    suites = [options.suite] if options.suite else plan.suites
    if options.suite and options.suite not in plan.suites:
        raise HarnessError(f"--suite '{options.suite}' is not in this plan (choose from {', '.join(plan.suites)})")
    if options.shard is not None and (options.stage != "generate" or len(suites) != 1):
        raise HarnessError("--shard needs --stage generate and one --suite")
    selected = STAGES if options.stage == "all" else (options.stage,)
    stages.copy_recipe(recipe, plan)
    with log_to_file(plan.layout.log):
        log.info("run %s: %d methods x %d attacks x %d suites -> %s", recipe.name, len(recipe.methods),
                 len(recipe.attacks), len(plan.suites), run_dir)
        if "unlearn" in selected:
            stages.unlearn(plan, methods, runtime)
        if "attack" in selected:
            stages.attack(plan, [(m, a) for m in methods for a in attacks], runtime)
        if "generate" in selected:
            every = stages.with_snapshots(plan, models)
            for model in every:
                for suite in suites:
                    stages.generate(plan, model, suite, options.shard, runtime)
            log.info("generate: %d models x %d suites done", len(every), len(suites))
        if "score" in selected:
            every = stages.with_snapshots(plan, models)
            for model in every:
                for suite in suites:
                    stages.score(plan, model, suite, runtime)
            log.info("score: %d models x %d suites done", len(every), len(suites))
        if "report" in selected:
            results = stages.report(plan)
            print_summary(results, recipe.concept.label if recipe.concept else None)
            print(f"report: {plan.layout.report.markdown}")
    return 0
