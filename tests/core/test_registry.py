"""One resolver for everything named by a registered name or an import path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError, in_file, keyed
from harness.registry import BUILTIN, REGISTRY, Plugin, declare, is_import_path, resolve


def undeclared(context, params):
    """A callable nobody declared."""


@pytest.mark.parametrize("kind", sorted(BUILTIN))
def test_every_builtin_name_resolves_to_its_declaration(kind: str) -> None:
    for name in BUILTIN[kind]:
        plugin = resolve(kind, name)
        assert isinstance(plugin, Plugin) and plugin.kind == kind and plugin.name == name
    assert set(BUILTIN[kind]) <= set(REGISTRY[kind])


def test_import_paths_and_errors_name_the_key() -> None:
    assert resolve("method", "harness.unlearn.conceptprune:conceptprune") is resolve("method", "conceptprune")
    assert is_import_path("a.b:c") and not is_import_path("nms") and not is_import_path("a b:c")
    with pytest.raises(HarnessError, match=r"r.yaml: attacks\[0\].attack: unknown attack 'nsm' \(registered: nms"):
        with in_file("r.yaml"), keyed("attacks[0].attack"):
            resolve("attack", "nsm")
    with pytest.raises(HarnessError, match="cannot import module 'no_such_package'"):
        resolve("metric", "no_such_package:Metric")
    with pytest.raises(HarnessError, match=f"'{__name__}:undeclared' is not declared as a method"):
        resolve("method", f"{__name__}:undeclared")


def test_a_name_declared_twice_for_two_objects_is_refused() -> None:
    declare("method", "test-twice")(undeclared)
    declare("method", "test-twice")(undeclared)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="method 'test-twice' is declared twice"):
        declare("method", "test-twice")(lambda context, params: None)
    del REGISTRY["method"]["test-twice"]


def test_a_revival_attack_fixes_what_its_name_says() -> None:
    nms = resolve("attack", "nms")
    assert nms.parse({"top_k": 0.5}).magnitude == "nms"
    with pytest.raises(HarnessError, match="magnitude: this attack fixes magnitude = nms"):
        nms.parse({"magnitude": "average"})
    assert resolve("attack", "ideal-sign-nms").reads == {"sharded", "original"}


def test_no_module_under_the_package_shadows_a_top_level_module(repo: Path) -> None:
    """`accelerate launch harness/revive.py` puts harness/ first on the path: none of its module or
    package names may be a standard or installed top-level module's."""
    import importlib.metadata

    installed = set(importlib.metadata.packages_distributions())
    children = {p.stem for p in (repo / "harness").glob("*.py")} | {
        p.name for p in (repo / "harness").iterdir() if (p / "__init__.py").is_file()}
    clashes = sorted(children & (set(sys.stdlib_module_names) | installed))
    assert clashes == []
