"""Named budgets of an attack: its params' defaults are the authors' published settings, and a
cheaper run is a named preset (`budget: quick`), never a silent default (PROTOCOL.md section 8).

A params dataclass that has presets declares them as a class attribute

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {"published": {}, "quick": {"steps": 300, ...}}

with a field `budget: str = "published"`; a recipe's `params: {budget: quick}` takes the
preset's values, and keys the recipe names beside it override them. Settings that say the same
thing two ways (`steps` or `passes`) are declared as `ALTERNATIVES = (("steps", "passes"), ...)`:
a recipe that names one drops the preset's other. `budget_record` says what the run was against
what was published, for the verdict it gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.errors import HarnessError

PUBLISHED = "published"
STRENGTH = ("steps", "lr", "batch_size", "accumulate", "weight_decay")
"""The settings whose values make an optimisation attack's budget."""


def presets_of(params_type: type) -> Mapping[str, Mapping[str, Any]] | None:
    """The budget presets a params dataclass declares, else None."""
    return getattr(params_type, "BUDGETS", None)


def with_budget(params_type: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe entry's params with its budget preset's values under the keys it names itself;
    an unknown preset is an error keyed at `budget`."""
    presets = presets_of(params_type)
    if presets is None:
        return dict(data)
    name = data.get("budget", PUBLISHED)
    if name not in presets:
        raise HarnessError(f"unknown budget '{name}' (choose from {', '.join(presets)})", key="budget")
    preset = dict(presets[name])
    for pair in getattr(params_type, "ALTERNATIVES", ()):
        for named, other in (pair, pair[::-1]):
            if named in data:
                preset.pop(other, None)
    return {**preset, **data, "budget": name}


def budget_record(params: Any, published_steps: int | None = None, data_size: int | None = None) -> dict[str, Any] | None:
    """The budget a run used: its preset, its strength settings, the samples it saw (and the
    passes over its data, given `data_size`), and whether it ran at least as hard as published
    (as many steps and samples or more, an lr at least the published one, the same decay;
    `published_steps` when the published budget is not a step count, as DiMRA's passes); None
    for params without presets."""
    presets = presets_of(type(params))
    if presets is None:
        return None
    published = type(params)(**presets[PUBLISHED])
    used = {key: getattr(params, key) for key in STRENGTH if hasattr(params, key)}
    reference = {key: getattr(published, key) for key in used}
    if published_steps is not None:
        reference["steps"] = published_steps
    samples = used.get("steps", 1) * used.get("batch_size", 1) * used.get("accumulate", 1)
    reference_samples = reference.get("steps", 1) * reference.get("batch_size", 1) * reference.get("accumulate", 1)
    at_least = (samples >= reference_samples and used.get("steps", 0) >= reference.get("steps", 0)
                and used.get("lr", 0) >= reference.get("lr", 0)
                and used.get("weight_decay") == reference.get("weight_decay"))
    label = params.budget if params.budget != PUBLISHED else PUBLISHED if at_least else "below published"
    record = {"preset": params.budget, "label": label, "settings": used, "samples": samples, "published": reference,
              "published_samples": reference_samples, "at_published_strength": at_least}
    if data_size:
        record |= {"data_size": data_size, "passes": round(samples / data_size, 3),
                   "published_passes": round(reference_samples / data_size, 3)}
    return record



def budget_note(budget: Mapping[str, Any] | None, rising: bool | None) -> str:
    """What a verdict's cell says after its share: ` @300 steps (quick)` (the label when below
    the published strength) and `, rising` when its curve was still rising at its end."""
    text = ""
    if budget is not None:
        text = f" @{round(budget['passes'], 2):g} passes" if "passes" in budget else f" @{budget['settings']['steps']} steps"
        text += "" if budget["at_published_strength"] else f" ({budget['label']})"
    return text + (", rising" if rising else "")
