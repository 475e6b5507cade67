"""Every input a recipe names, checked before the first stage starts: the files and folders its
methods' and attacks' params name (checkpoints, mask files, image folders), their training
data (present, whole, and, for an attack, free of the erased concept) and the score section's
weights and references. The suites' data is checked when the plan is built. A mistake is one
line naming the recipe key and the file, in seconds rather than after minutes of unlearning.

Only what the selected stages will read is checked: a SLURM task that runs one stage does not
read the inputs of the others."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, in_file, keyed
from harness.experiment.plan import Plan
from harness.inputs import check_input
from harness.recipe import declared
from harness.unlearn.method import check_sampling


def check_inputs(plan: Plan, stages: Collection[str], methods: Collection[str], attacks: Collection[str]) -> None:
    """Check what `stages` will read for the selected `methods` and `attacks` of the plan."""
    recipe = plan.recipe
    erased = recipe.concept.targets if recipe.concept else []
    with in_file(recipe.source):
        if "unlearn" in stages:
            with keyed("concept"):
                check_fields(recipe.concept, [], plan.runtime.data_dir)
            for index, entry in enumerate(recipe.methods):
                if entry.name in methods:
                    with keyed(f"methods[{index}].params"):
                        params = declared("method", entry.method, entry.params)[1]
                        check_fields(params, [], plan.runtime.data_dir)
                        check_sampling(params, recipe.model, recipe.generation)
        if "attack" in stages:
            for index, entry in enumerate(recipe.attacks):
                if entry.name in attacks:
                    with keyed(f"attacks[{index}].params"):
                        check_fields(declared("attack", entry.attack, entry.params)[1], erased, plan.runtime.data_dir)
        if "score" in stages:
            with keyed("score"):
                check_fields(recipe.score, [], plan.runtime.data_dir)
                check_fid_reference(recipe.score.fid_reference)


def check_fields(settings: Any, exclude: list[str], data_dir: str | None) -> None:
    """Walk a params or settings dataclass: each field marked as an input path is checked, each
    training-data spec checked as data (captions must not name a concept in `exclude`)."""
    from harness.train.data import DataSpec, check_spec

    if not dataclasses.is_dataclass(settings):
        return
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        with keyed(field.name):
            if isinstance(value, DataSpec):
                check_spec(value, exclude, data_dir)
            elif "input" in field.metadata and value:
                for path in value if isinstance(value, list) else [value]:
                    check_input(path, field.metadata["input"])
            else:
                check_fields(value, exclude, data_dir)


def check_fid_reference(reference: str | None) -> None:
    """An FID reference is a folder of images or shards, or a reference set a world names."""
    from harness.world import reference_images

    if reference and not Path(reference).expanduser().is_dir() and reference_images(reference, (1, 1), 1) is None:
        raise HarnessError(f"{reference}: no such folder, and no world names a reference set so", key="fid_reference")
