"""Choosing target layers by glob patterns over parameter names."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from harness.errors import HarnessError


def select_layers(names: Iterable[str], patterns: list[str]) -> list[str]:
    """Names matching any pattern, in the model's order; a pattern that matches nothing is an error."""
    names = list(names)
    selected: set[str] = set()
    for pattern in patterns:
        matches = fnmatch.filter(names, pattern)
        if not matches:
            raise HarnessError(f"layer pattern '{pattern}' matches no parameter", key="")
        selected.update(matches)
    return [name for name in names if name in selected]
