"""`harness unlearn --recipe FILE --out DIR [--method NAME]`: run one method of a recipe (and its defense)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.config import settings_arguments, settings_from_arguments
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.unlearn import run as unlearn
from harness.unlearn.job import UnlearnJob


@dataclass
class UnlearnOptions:
    """What to unlearn and where to."""

    recipe: str
    """recipe YAML (or a shipped recipe's name) with model, concept and methods"""
    out: str
    """output folder for the unlearned tensors, the mask and the record"""
    method: str | None = None
    """which of the recipe's methods (by name; default: the only one)"""
    fidelity: Literal["paper", "reference-code"] | None = None
    """override the recipe's fidelity: paper, or reference-code (the authors' published code's behaviour)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_flags=settings_arguments(parser, UnlearnOptions),
                        _runtime=settings_arguments(parser, RuntimeSettings, skip=("accelerator", "devices", "strategy", "num_nodes")))


def run(args: argparse.Namespace) -> int:
    options = settings_from_arguments(UnlearnOptions, args, args._flags)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    recipe = load_recipe(options.recipe, controls=False)
    if options.fidelity:
        recipe = dataclasses.replace(recipe, fidelity=options.fidelity)
    job = UnlearnJob.from_recipe(recipe, options.method, Path(options.out), runtime)
    record = unlearn.run(job)
    print(f"{job.method.name}: changed {record.changed} weights ({100 * record.fraction_of_layers:.3f}% of the "
          f"target layers) in {record.seconds:.1f} s -> {options.out}")
    return 0
