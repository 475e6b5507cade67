"""Choosing target layers by glob patterns over parameter names."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from harness.errors import HarnessError
from harness.models.components import is_text_encoder


def select_layers(names: Iterable[str], patterns: list[str]) -> list[str]:
    """Names matching any pattern, in the model's order; a pattern that matches nothing is an
    error. A pattern starting with `text_encoder.` names text-encoder tensors
    (harness.models.components), any other UNet tensors only: `*attn2*` or `*` never reaches
    the text encoder."""
    names = list(names)
    selected: set[str] = set()
    for pattern in patterns:
        pool = [name for name in names if is_text_encoder(name) == is_text_encoder(pattern)]
        matches = fnmatch.filter(pool, pattern)
        if not matches:
            raise HarnessError(f"layer pattern '{pattern}' matches no parameter", key="")
        selected.update(matches)
    return [name for name in names if name in selected]
