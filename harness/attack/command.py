"""`harness attack --recipe FILE --unlearned DIR --out DIR [--attack NAME]`: one of a recipe's
attacks against an unlearn stage's output (`harness unlearn --out DIR`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from harness.attack import run as attack_stage
from harness.attack.job import AttackJob
from harness.attack.revival.command import print_summary
from harness.attack.revival.runner import make_accelerator
from harness.config import settings_arguments, settings_from_arguments
from harness.layout import AttackFiles
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings


@dataclass
class AttackOptions:
    """Which attack, on which unlearned model, where to."""

    recipe: str
    """recipe YAML (or a shipped recipe's name) with model, concept and attacks"""
    unlearned: str
    """the unlearn stage's output folder (`harness unlearn --out DIR`)"""
    out: str
    """output folder for the attacked tensors, new tokens and the record"""
    attack: str | None = None
    """which of the recipe's attacks (by name; default: the only one)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_flags=settings_arguments(parser, AttackOptions),
                        _runtime=settings_arguments(parser, RuntimeSettings))


def run(args: argparse.Namespace) -> int:
    """Run the attack (sharded over Accelerate processes when it declares so) and print what it did."""
    options = settings_from_arguments(AttackOptions, args, args._flags)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    job = AttackJob.from_recipe(load_recipe(options.recipe, controls=False), options.attack, Path(options.unlearned),
                                Path(options.out), runtime)
    record = attack_stage.run(job, make_accelerator(runtime.device))
    if record is None:
        return 0
    if not record.applicable:
        print(f"{record.name} on {record.method}: not applicable ({record.reason})")
    elif record.revival is not None:
        print_summary(record, AttackFiles(Path(options.out)))
    else:
        print(f"{record.name} on {record.method}: {record.seconds:.1f} s -> {options.out}")
    return 0
