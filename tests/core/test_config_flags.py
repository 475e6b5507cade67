"""Command-line flags made from settings dataclasses: names, help from the field docstrings, one
parsing and checking path with the YAML loader, errors that name the option."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from harness.attack.revival.settings import ReviveSettings
from harness.config import field_docs, parse_dataclass, settings_arguments, settings_from_arguments
from harness.errors import HarnessError, in_file


@dataclass
class Inner:
    """A nested section."""

    tol: float = 1e-4
    """relative change that ends a stage"""
    mode: Literal["a", "b"] = field(default="a", metadata={"flag": "--inner-mode"})
    """how it works"""


@dataclass
class Outer:
    """Top-level settings."""

    count: int = 3
    """how many"""
    names: list[str] = field(default_factory=list)
    """a name (repeatable)"""
    ratio: float | None = None
    """an optional share"""
    fast: bool = False
    """go fast"""
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")


def parse(argv: list[str], base: Outer | None = None) -> Outer:
    parser = argparse.ArgumentParser()
    flags = settings_arguments(parser, Outer)
    return settings_from_arguments(Outer, parser.parse_args(argv), flags, base)


def test_flags_take_the_fields_names_docs_and_types() -> None:
    parser = argparse.ArgumentParser()
    settings_arguments(parser, Outer)
    text = parser.format_help()
    assert "--count N" in text and "how many (default: 3)" in text
    assert "--names TEXT" in text and "--tol X" in text and "--inner-mode {a,b}" in text and "--fast, --no-fast" in text
    assert field_docs(Inner) == {"tol": "relative change that ends a stage", "mode": "how it works"}
    settings = parse(["--count", "5", "--names", "x", "--names", "y", "--tol", "1e-6", "--inner-mode", "b", "--fast"])
    assert settings == Outer(count=5, names=["x", "y"], fast=True, inner=Inner(tol=1e-6, mode="b"))
    assert parse([]) == Outer()
    assert parse(["--ratio", "none"], Outer(ratio=0.5)).ratio is None


def test_absent_options_keep_the_base_and_given_ones_override_it() -> None:
    base = Outer(count=7, inner=Inner(tol=0.5))
    assert parse(["--fast"], base) == Outer(count=7, fast=True, inner=Inner(tol=0.5))


@pytest.mark.parametrize(("argv", "message"), [
    (["--count", "x"], "--count: expected an integer, got 'x'"),
    (["--tol", "nan"], "--tol: expected a finite number, got 'nan'"),
    (["--tol", "inf"], "--tol: expected a finite number, got 'inf'"),
    (["--count", "0"], "count must be at least 1, got 0"),
])
def test_bad_values_name_the_option_or_the_key(argv: list[str], message: str) -> None:
    with pytest.raises(HarnessError, match=message):
        parse(argv)


def test_the_yaml_loader_refuses_non_finite_numbers_too() -> None:
    with pytest.raises(HarnessError, match=r"x.yaml: inner.tol: expected a finite number"), in_file("x.yaml"):
        parse_dataclass(Outer, {"inner": {"tol": float("inf")}})


def test_every_stage_s_settings_make_unambiguous_flags() -> None:
    parser = argparse.ArgumentParser()
    flags = settings_arguments(parser, ReviveSettings)
    options = {f.option for f in flags}
    assert {"--unlearned", "--out", "--top-k", "--mask-file", "--zero-threshold", "--completion", "--tol"} <= options
