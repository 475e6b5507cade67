"""Prompt suites: records with a stable id and seed, from a manifest's file or built into a world.

Manifest suites (harness/resources/manifests/*.yaml) read a local copy of their upstream file;
a world's built-in suites (the miniature world's `digits-*`) come from the world plug-in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.generate import manifests


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a suite; `id` is its 0-based position, stable across runs."""

    id: int
    prompt: str
    seed: int
    guidance: float | None = None
    label: str | None = None


@dataclass(frozen=True)
class Suite:
    """A named, ordered list of prompt records (ids 0..len-1)."""

    name: str
    kind: str
    """objects, artists, nudity, captions (a manifest's), or a world's kind (digits)"""
    records: tuple[PromptRecord, ...]
    metrics: tuple[str, ...]
    """The metrics this suite is scored with by default."""
    source: str
    """Where the records came from (a manifest path, or 'built-in')."""
    score_defaults: dict[str, Any] = field(default_factory=dict)
    """What `auto` scoring settings mean for this suite (classifier, fid_features, fid_reference)."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, in order of first appearance."""
        return list(dict.fromkeys(r.label for r in self.records if r.label is not None))


def list_suites() -> list[str]:
    """Every suite name: the manifests', then the worlds' built-in ones."""
    from harness.world import builtin_suite_names

    return manifests.manifest_names() + builtin_suite_names()


def is_builtin(name: str) -> bool:
    """Whether `name` is a world's built-in suite (no file behind it)."""
    from harness.world import builtin_suite

    return name not in manifests.manifest_names() and builtin_suite(name) is not None


def load_suite(name: str, data_dir: str | Path | None = None) -> Suite:
    """The suite `name`; manifest suites read their file from `data_dir` (see manifests.data_dir)
    after checking its sha256, columns and row count. An unknown name is a keyed error."""
    from harness.world import builtin_suite, builtin_suite_names

    if name in manifests.manifest_names():
        manifest = manifests.load_manifest(name)
        rows = manifests.read_rows(manifest, manifests.data_dir(data_dir))
        records = tuple(_record(manifest, index, row) for index, row in enumerate(rows))
        return Suite(name, manifest.kind, records, tuple(manifest.metrics), manifest.source)
    suite = builtin_suite(name)
    if suite is None:
        raise HarnessError(f"unknown suite '{name}' (known: "
                           f"{', '.join(manifests.manifest_names() + builtin_suite_names())})", key="")
    return suite


def _record(manifest: manifests.Manifest, index: int, row: dict[str, str | None]) -> PromptRecord:
    prompt = row["prompt"]
    if prompt is None:
        raise HarnessError(f"suite {manifest.name}: row {index} has no prompt")
    seed = _number(manifest.name, index, "seed", row.get("seed"), int)
    guidance = _number(manifest.name, index, "guidance", row.get("guidance"), float)
    label = row.get("label")
    return PromptRecord(
        id=index,
        prompt=prompt.strip(),
        seed=manifest.default_seed if seed is None else seed,
        guidance=guidance,
        label=label.strip() if label else None,
    )


def _number(suite: str, index: int, role: str, text: str | None, kind: type) -> int | float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise HarnessError(f"suite {suite}: row {index}: {role} {text!r} is not a number") from None
    if kind is int:
        if not value.is_integer() or value < 0:
            raise HarnessError(f"suite {suite}: row {index}: seed {text!r} is not a non-negative integer")
        return int(value)
    if not math.isfinite(value):
        raise HarnessError(f"suite {suite}: row {index}: {role} {text!r} is not finite")
    return value
