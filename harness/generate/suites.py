"""Prompt suites: records with a stable id and seed, from a manifest's file or built into a world.

Manifest suites (harness/resources/manifests/*.yaml) read a local copy of their upstream file;
a world's built-in suites (the miniature world's `digits-*`) come from the world plug-in; a
user's own prompt file (a path ending in .csv or .txt) is a suite named after the file's stem:
a CSV with a `prompt` column and optional `seed`, `guidance` and `label` columns, or a text file
with one prompt per line. A row without a seed takes the recipe's fixed seed plus its index.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.generate import manifests
from harness.layout import is_prompt_file


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
    limit: int | None = None
    """Set when the suite was cut to its first `limit` prompts (`--limit`, a pilot)."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, in order of first appearance."""
        return list(dict.fromkeys(r.label for r in self.records if r.label is not None))


def first(suite: Suite, limit: int | None) -> Suite:
    """The suite's first `limit` prompts (all of them when None), marked as cut for a pilot."""
    if limit is None:
        return suite
    if limit < 1:
        raise HarnessError(f"must be at least 1, got {limit}", key="--limit")
    return dataclasses.replace(suite, records=suite.records[:limit], limit=limit)


def list_suites() -> list[str]:
    """Every suite name: the manifests', then the worlds' built-in ones."""
    from harness.world import builtin_suite_names

    return manifests.manifest_names() + builtin_suite_names()


def is_builtin(name: str) -> bool:
    """Whether `name` is a world's built-in suite (no file behind it)."""
    from harness.world import builtin_suite

    return name not in manifests.manifest_names() and builtin_suite(name) is not None


def load_prompt_file(spec: str, seed_base: int = 0) -> Suite:
    """A user's prompt file as a suite named after its stem (see the module's text). Scored by
    accuracy when its rows carry labels, else by the CLIP score."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise HarnessError(f"{path}: no such prompt file")
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise HarnessError(f"{label}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise HarnessError(f"{label}: cannot read the prompt file ({error.strerror})") from None
    if path.suffix.lower() == ".txt":
        prompts = [line.strip() for line in text.split("\n") if line.strip()]
        records = tuple(PromptRecord(i, prompt, seed_base + i) for i, prompt in enumerate(prompts))
    else:
        header = next(iter(csv.reader(io.StringIO(text, newline=""))), [])
        header = [column.strip() for column in header]
        if "prompt" not in header:
            raise HarnessError(f"{label}: no 'prompt' column in the CSV's header (columns: {', '.join(header) or 'none'})")
        present = {role: role for role in manifests.ROLES if role in header}
        manifest = manifests.Manifest(
            name=label, description="a user's prompt file", kind="captions", format="csv",
            files=[manifests.ManifestFile(path.name, None, url=path.resolve().as_uri())],
            columns=manifests.Columns(**present), count=1, license="the user's")
        rows = manifests._read_file(manifest, path, {role: present.get(role) for role in manifests.ROLES})
        records = tuple(_record(manifest, index, row, seed_base + index) for index, row in enumerate(rows)
                        if (row.get("prompt") or "").strip())
        records = tuple(dataclasses.replace(r, id=i) for i, r in enumerate(records))
    if not records:
        raise HarnessError(f"{label}: the prompt file holds no prompt")
    metrics = ("accuracy",) if any(r.label for r in records) else ("clip",)
    return Suite(path.stem, "user", records, metrics, str(path))


def load_suite(name: str, data_dir: str | Path | None = None, seed_base: int = 0) -> Suite:
    """The suite `name`; manifest suites read their file from `data_dir` (see manifests.data_dir)
    after checking its sha256, columns and row count; a prompt file (a .csv or .txt path) is read
    as load_prompt_file does, rows without a seed seeded from `seed_base`. An unknown name is a
    keyed error."""
    from harness.world import builtin_suite, builtin_suite_names

    if is_prompt_file(name):
        try:
            return load_prompt_file(name, seed_base)
        except HarnessError as error:
            if error.key is None:  # a recipe's `suites` entry names it
                error.key = ""
            raise
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


def _record(manifest: manifests.Manifest, index: int, row: dict[str, str | None],
            default_seed: int | None = None) -> PromptRecord:
    prompt = row["prompt"]
    if prompt is None:
        raise HarnessError(f"suite {manifest.name}: row {index} has no prompt")
    seed = _number(manifest.name, index, "seed", row.get("seed"), int)
    guidance = _number(manifest.name, index, "guidance", row.get("guidance"), float)
    label = row.get("label")
    return PromptRecord(
        id=index,
        prompt=prompt.strip(),
        seed=(manifest.default_seed if default_seed is None else default_seed) if seed is None else seed,
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
