"""`harness benchmark [RECIPE]`: a recipe's whole benchmark, or one piece of one stage.

With no recipe it runs the embedded default, the miniature world's benchmark, and prints a table
in the shape of the paper's Table 1. SLURM jobs call it with `--stage` and `--shard`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from harness.errors import HarnessError
from harness.experiment import stages
from harness.experiment.plan import build_plan
from harness.experiment.summary import print_summary
from harness.recipe import load_recipe

log = logging.getLogger(__name__)

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "digits-benchmark.yaml"
"""The embedded default, found beside the package in the checkout it was installed from (`pip install -e .`)."""
STAGES = ("unlearn", "revive", "generate", "score", "report", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; all of them are optional for the embedded default."""
    parser.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="recipe YAML (default: recipes/digits-benchmark.yaml of this checkout)")
    parser.add_argument("--run-dir", help="run directory (default runs/<recipe name>)")
    parser.add_argument("--stage", choices=STAGES, default="all", help="run one stage (default: all, in order)")
    parser.add_argument("--variant", action="append", help="revive: only this variant (repeatable)")
    parser.add_argument("--model", help="generate/score: only this model (pretrained, unlearned, revived-<variant>)")
    parser.add_argument("--suite", help="generate/score: only this suite")
    parser.add_argument("--shard", type=int, help="generate: only this shard (a SLURM array task)")
    parser.add_argument("--data-dir", help="folder of the prompt data (default $HARNESS_DATA_DIR)")
    parser.add_argument("--device", default="cpu", help="device for unlearning and scoring (cpu, cuda)")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator for generation")
    parser.add_argument("--devices", default="1", help="Lightning devices for generation")
    parser.add_argument("--list-jobs", action="store_true", help="print the plan as JSON and exit")


def run(args: argparse.Namespace) -> int:
    """Carry out the selected stage(s) of the recipe's plan."""
    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir or Path("runs") / recipe.name)
    plan = build_plan(recipe, run_dir, args.data_dir)
    if args.list_jobs:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    models = _pick(args.model, plan.models, "--model")
    suites = _pick(args.suite, plan.suites, "--suite")
    if args.shard is not None and (args.stage != "generate" or len(suites) != 1):
        raise HarnessError("--shard needs --stage generate and one --suite")
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    stages.copy_recipe(recipe, run_dir)
    selected = STAGES[:-1] if args.stage == "all" else (args.stage,)
    if "unlearn" in selected:
        stages.unlearn(plan, args.data_dir, args.device)
    if "revive" in selected:
        stages.revive(plan, args.variant)
    for model in models if "generate" in selected else []:
        for suite in suites:
            stages.generate(plan, model, suite, args.shard, args.data_dir, args.accelerator, devices)
    for model in models if "score" in selected else []:
        for suite in suites:
            stages.score(plan, model, suite, args.data_dir, args.accelerator, devices)
    if "report" in selected:
        out = stages.report(plan)
        print_summary(plan)
        print(f"report: {out / 'report.md'}")
    return 0


def _pick(value: str | None, choices: list[str], option: str) -> list[str]:
    if value is None:
        return choices
    if value not in choices:
        raise HarnessError(f"{option} '{value}' is not in this plan (choose from {', '.join(choices)})")
    return [value]
