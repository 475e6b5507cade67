"""The loader's strictness and its keyed one-line errors (pydantic underneath): no silent
conversions, bounds declared on the fields and held on direct construction too, records written
as before."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest
from annotated_types import Ge, Gt, Le

from harness.config import check_bounds, parse_dataclass
from harness.errors import HarnessError, in_file, keyed
from harness.records import LayerReport, to_json


@dataclass
class Leaf:
    top_k: Annotated[float, Gt(0), Le(1)] = 0.5
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class Entry:
    name: str
    count: Annotated[int, Ge(1)] = 1
    flag: bool = False
    params: Leaf = field(default_factory=Leaf)


@dataclass
class Root:
    methods: list[Entry] = field(default_factory=list)


def error_of(data: dict, file: str | None = None) -> HarnessError:
    with pytest.raises(HarnessError) as caught, in_file(file or ""):
        parse_dataclass(Root, data)
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize(("entry", "key", "message"), [
    ({"name": "x", "parms": {}}, "methods[0]", "unknown key 'parms' (allowed: name, count, flag, params)"),
    ({}, "methods[0]", "missing key 'name'"),
    ({"name": "x", "count": "3"}, "methods[0].count", "expected an integer, got '3'"),
    ({"name": "x", "count": 3.0}, "methods[0].count", "expected an integer, got 3.0"),
    ({"name": "x", "count": True}, "methods[0].count", "expected an integer, got True"),
    ({"name": 5}, "methods[0].name", "expected str, got 5"),
    ({"name": "x", "flag": 1}, "methods[0].flag", "expected bool, got 1"),
    ({"name": "x", "params": {"top_k": "nan"}}, "methods[0].params.top_k", "expected a finite number, got 'nan'"),
    ({"name": "x", "params": {"top_k": math.inf}}, "methods[0].params.top_k", "expected a finite number, got inf"),
    ({"name": "x", "params": {"top_k": "many"}}, "methods[0].params.top_k", "expected a number, got 'many'"),
    ({"name": "x", "params": {"top_k": 1.5}}, "methods[0].params", "top_k must lie in (0, 1], got 1.5"),
    ({"name": "x", "count": 0}, "methods[0]", "count must be at least 1, got 0"),
    ({"name": "x", "params": {"mode": "c"}}, "methods[0].params.mode", "unknown value 'c' (choose from a, b)"),
])
def test_errors_are_keyed_one_liners(entry: dict, key: str, message: str) -> None:
    error = error_of({"methods": [entry]})
    assert (error.key, error.message) == (key, message)
    with pytest.raises(HarnessError) as caught, in_file("r.yaml"), keyed("experiment"):
        parse_dataclass(Root, {"methods": [entry]})
    assert str(caught.value) == f"r.yaml: experiment.{key}: {message}"


def test_lists_only_from_lists_and_floats_also_from_yaml_strings() -> None:
    assert str(error_of({"methods": ({"name": "x"},)}, "r.yaml")) == "r.yaml: methods: expected a list, got tuple"
    assert str(error_of({"methods": "x"}, "r.yaml")) == "r.yaml: methods: expected a list, got str"
    assert parse_dataclass(Root, {"methods": [{"name": "x", "params": {"top_k": "1e-3"}}]}).methods[0].params.top_k == 1e-3
    assert parse_dataclass(Root, {"methods": [{"name": "x", "params": {"top_k": 1}}]}).methods[0].params.top_k == 1.0


def test_bounds_hold_on_direct_construction_too() -> None:
    with pytest.raises(ValueError, match=r"top_k must lie in \(0, 1\], got 0"):
        Leaf(top_k=0)


def test_records_are_written_as_json_with_non_finite_numbers_as_null() -> None:
    report = LayerReport(name="w", shape=[2, 3], pruned=1, lam=math.nan, sign_accuracy_by_k={"0.5": math.inf})
    data = to_json(report)
    assert data["lam"] is None and data["sign_accuracy_by_k"] == {"0.5": None} and data["shape"] == [2, 3]
    assert json.loads(json.dumps(data)) == data
