"""Named attack budgets: the published settings by default, a preset by name, the recipe's own
keys over the preset, an unknown preset refused by key, and the record of what a run used."""

from __future__ import annotations

import pytest

from harness.budgets import budget_record
from harness.errors import HarnessError
from harness.registry import resolve


def parse(params: dict):
    return resolve("attack", "concept-inversion").parse(params)


def test_the_default_is_the_authors_budget() -> None:
    params = parse({})
    assert (params.budget, params.steps, params.lr, params.batch_size, params.accumulate, params.weight_decay) == \
        ("published", 5000, 0.08, 4, 4, 1e-2)
    record = budget_record(params)
    assert record["at_published_strength"] and record["samples"] == record["published_samples"] == 80_000


def test_a_preset_by_name_and_keys_beside_it_override_it() -> None:
    quick = parse({"budget": "quick"})
    assert (quick.steps, quick.lr, quick.accumulate, quick.weight_decay) == (300, 5e-3, 1, 0.0)
    record = budget_record(quick)
    assert record["preset"] == "quick" and record["samples"] == 1200 and not record["at_published_strength"]
    longer = parse({"budget": "quick", "steps": 900})
    assert (longer.steps, longer.lr) == (900, 5e-3)
    assert budget_record(parse({"steps": 6000}))["at_published_strength"]  # more than published is at least it
    assert not budget_record(parse({"steps": 500}))["at_published_strength"]
    assert budget_record(parse({"lr": 0.1}))["at_published_strength"]  # a larger step is not a weaker attack
    assert not budget_record(parse({"lr": 0.01}))["at_published_strength"]


@pytest.mark.parametrize(("params", "message"), [
    ({"budget": "huge"}, "budget: unknown budget 'huge' (choose from published, quick)"),
    ({"steps": 0}, "steps"),
    ({"accumulate": 0}, "accumulate"),
])
def test_bad_budgets_are_keyed_errors(params: dict, message: str) -> None:
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(params)


def test_attacks_without_presets_take_no_budget_key() -> None:
    with pytest.raises(HarnessError, match="unknown key 'budget'"):
        resolve("attack", "nms").parse({"budget": "quick"})
