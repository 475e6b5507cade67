"""Automatic positive controls (PROTOCOL.md section 8): each attack declares the method it is
known to break (`harness.registry.attack(..., control=...)`). Where no undefended row of a recipe
is that method, `controls: auto` adds one, `METHOD-control`, restricted to the attacks it
controls, with the settings of the model family's control preset (`resources/controls/`:
`NAME.yaml` for `zoo:NAME`, `stable-diffusion.yaml` for hub ids and folders). Control rows keep
their unlearned model in the harness cache, so one world or model trains each control once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import load_yaml, parse_dataclass
from harness.errors import HarnessError, in_file, keyed
from harness.registry import resolve
from harness.resources import resource_dir
from harness.settings.unlearn import MethodSettings

STABLE_DIFFUSION = "stable-diffusion"
"""The preset of every model that is not a world of the zoo (hub ids and folders)."""


def control_label(method: str) -> str:
    """The label of the row that stands for `method` as a control."""
    return f"{method}-control"


def preset_path(model: str) -> Path | None:
    """The control preset of `model`'s family, None when the package ships none."""
    from harness.world import ZOO_PREFIX

    name = model.removeprefix(ZOO_PREFIX) if model.startswith(ZOO_PREFIX) else STABLE_DIFFUSION
    path = resource_dir("controls") / f"{name}.yaml"
    return path if path.is_file() else None


def needed_controls(recipe: dict[str, Any]) -> dict[str, list[str]]:
    """Per control method no undefended row of `recipe` (a recipe's dataclasses.asdict form)
    stands for: the labels of the attacks it controls."""
    needed: dict[str, list[str]] = {}
    for entry in recipe.get("attacks") or []:
        try:
            control = resolve("attack", entry["attack"]).control
        except HarnessError:
            continue
        if control is not None and stand_in(recipe, control, entry.get("name") or entry["attack"]) is None:
            needed.setdefault(control, []).append(entry.get("name") or entry["attack"])
    return needed


def stand_in(recipe: dict[str, Any], control: str, attack: str) -> str | None:
    """The label of the recipe's undefended row of method `control` that `attack` runs on, if any."""
    return next((m.get("name") or m["method"] for m in recipe.get("methods") or []
                 if m["method"] == control and not m.get("defense")
                 and (m.get("attacks") is None or attack in m["attacks"])), None)


def erases_several(control: str) -> bool:
    """Whether method `control` erases several concepts at once (pruning methods unite masks)."""
    return resolve("method", control).prunes


def missing_reason(model: str, several: bool, control: str) -> str | None:
    """Why `controls: auto` could not add a row of `control` for `model` (`several`: the concept
    lists several targets); None when it could (a run made before the row was added lacks it)."""
    if several and not erases_several(control):
        return f"{control} erases one concept at a time and concept.target lists several"
    path = preset_path(model)
    if path is None or control not in load_yaml(path):
        return f"no control preset for this model; add a row of {control}"
    return None


def control_rows(recipe: dict[str, Any], several: bool) -> list[MethodSettings]:
    """The rows `controls: auto` adds to a loaded recipe (`recipe` as a dict, `several`: its concept
    lists several targets): one per control method it lacks, where the model's family has a
    preset for it and the concept allows it."""
    needed = needed_controls(recipe)
    path = preset_path(recipe["model"])
    if not needed or path is None or recipe["concept"] is None:
        return []
    taken = sorted({control_label(c) for c in needed} & {m["name"] for m in recipe["methods"]})
    if taken:
        raise HarnessError(f"a row is named '{taken[0]}', the label of an automatic control row "
                           "(rename it, or set controls: off)", key="methods", rooted=True)
    preset = load_yaml(path)
    rows = []
    with in_file(path):
        for control, attacks in needed.items():
            if control not in preset or (several and not erases_several(control)):
                continue

            with keyed(control):
                rows.append(parse_dataclass(MethodSettings, {
                    **preset[control], "method": control, "name": control_label(control),
                    "attacks": attacks, "cache": True}))
    return rows
