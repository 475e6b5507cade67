"""One resolver for everything named by a registered name or an import path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.registry import REGISTERED, is_import_path, resolve, resolve_callable


@pytest.mark.parametrize("kind", sorted(REGISTERED))
def test_every_registered_name_resolves(kind: str) -> None:
    for name in REGISTERED[kind]:
        assert resolve(kind, name, "test") is not None


def test_import_paths_and_errors_name_the_key() -> None:
    assert resolve_callable("method", "harness.unlearn.conceptprune:conceptprune", "k") is resolve("method", "conceptprune", "k")
    assert is_import_path("a.b:c") and not is_import_path("nms") and not is_import_path("a b:c")
    with pytest.raises(HarnessError, match=r"r.yaml: attacks\[0\].attack: unknown attack 'nsm' \(registered: nms"):
        resolve("attack", "nsm", "r.yaml: attacks[0].attack")
    with pytest.raises(HarnessError, match="cannot import module 'no_such_package'"):
        resolve("metric", "no_such_package:Metric", "--metrics")
    with pytest.raises(HarnessError, match="is not callable"):
        resolve_callable("world", "harness.registry:REGISTERED", "w")


def test_no_module_under_the_package_shadows_a_top_level_module(repo: Path) -> None:
    """`accelerate launch harness/revive.py` puts harness/ first on the path: none of its module or
    package names may be a standard or installed top-level module's."""
    import importlib.metadata

    installed = set(importlib.metadata.packages_distributions())
    children = {p.stem for p in (repo / "harness").glob("*.py")} | {
        p.name for p in (repo / "harness").iterdir() if (p / "__init__.py").is_file()}
    clashes = sorted(children & (set(sys.stdlib_module_names) | installed))
    assert clashes == []
