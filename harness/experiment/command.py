"""`harness benchmark [RECIPE]`: a recipe's whole matrix, or one piece of one stage.

With no recipe it runs the embedded default (the miniature world's benchmark, a recipe shipped
in the package) and prints the matrix's table. SLURM jobs call it with `--stage` and `--shard`.
The console shows one line per stage and progress bars; the run directory's log holds the detail.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

from harness.config import settings_arguments, settings_from_arguments
from harness.experiment.lanes import resolve_workers
from harness.experiment.run import Selection, plan_for, run_benchmark
from harness.experiment.summary import print_summary
from harness.runtime import RuntimeSettings

log = logging.getLogger(__name__)

DEFAULT_RECIPE = "digits-matrix-quick"
"""The embedded default: a recipe shipped in the package."""


@dataclass
class BenchmarkOptions:
    """Where to run, and which part of the recipe's plan."""

    run_dir: str | None = None
    """run directory (default runs/<recipe name>)"""
    selection: Selection = field(default_factory=Selection)
    list_jobs: bool = False
    """print the plan as JSON and exit"""
    fidelity: Literal["paper", "reference-code"] | None = None
    """override the recipe's fidelity: paper, or reference-code (the authors' published code's behaviour)"""
    limit: int | None = None
    """a pilot: generate and score only the first N prompts of every suite (recorded in results.json)"""
    workers: str = "auto"
    """worker processes of a whole run on this machine: a count, or auto (1 on a GPU; on a CPU its
    core count, at most 4)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; all of them are optional for the embedded default."""
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                        help=f"recipe YAML, or a shipped recipe's name (default: {DEFAULT_RECIPE})")
    parser.set_defaults(_flags=settings_arguments(parser, BenchmarkOptions),
                        _runtime=settings_arguments(parser, RuntimeSettings))


def run(args: argparse.Namespace) -> int:
    """Carry out the selected stage(s) of the recipe's plan; print the matrix after the report."""
    options = settings_from_arguments(BenchmarkOptions, args, args._flags)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    plan = plan_for(args.recipe, options.run_dir, options.fidelity, runtime, options.limit)
    if options.list_jobs:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    results = run_benchmark(plan, options.selection, resolve_workers(options.workers, runtime.device))
    if results is not None:
        concept = plan.recipe.concept
        print_summary(results, concept.label if concept else None)
        if plan.recipe.limit is not None:
            print(f"pilot: only the first {plan.recipe.limit} prompts of every suite (--limit)")
        print(f"report: {plan.layout.report.markdown}")
    return 0
