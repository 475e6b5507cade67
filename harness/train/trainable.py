"""Which UNet parameters a training run changes: glob patterns over parameter names, or a preset.

Presets (ESD's names, PROTOCOL.md section 6): `esd-x` the cross-attention (`attn2`) projections,
`esd-u` every parameter except cross-attention, `full` every parameter.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from harness.errors import HarnessError

PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "esd-x": (["*attn2.*"], []),
    "esd-u": (["*"], ["*attn2.*"]),
    "full": (["*"], []),
}
"""Preset -> (globs that include, globs that exclude)."""


def trainable_names(names: Iterable[str], spec: str | list[str]) -> list[str]:
    """The parameter names a preset or a list of globs selects, in the model's order; a glob
    or preset that selects nothing is an error (keyed: the caller names the key)."""
    names = list(names)
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise HarnessError(f"unknown preset '{spec}' (choose from {', '.join(PRESETS)}, or list globs)", key="")
        include, exclude = PRESETS[spec]
    else:
        include, exclude = list(spec), []
    if not include:
        raise HarnessError("name at least one glob pattern", key="")
    for pattern in include:
        if not fnmatch.filter(names, pattern):
            raise HarnessError(f"pattern '{pattern}' matches no UNet parameter", key="")
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) for p in include)
              and not any(fnmatch.fnmatch(n, p) for p in exclude)]
    if not chosen:
        raise HarnessError(f"'{spec}' selects no UNet parameter", key="")
    return chosen
