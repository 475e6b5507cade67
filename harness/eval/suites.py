"""Prompt suites: records with a stable id and seed, from a manifest's file or built in.

Manifest suites (data_manifests/*.yaml) read a local copy of their upstream file; the
miniature world's digit suites are built from `harness.models.zoo.digits` with no file:

- `digits-<name>` (`digits-seven`): prompts for one digit, label = the digit's name;
- `digits-all`: every digit, ids grouped by digit;
- `digits-neutral`: prompts naming no digit, no label;

each with 50 prompts per digit, or N with a suffix (`digits-all-20`, `digits-seven-5`).
A prompt's seed depends only on its digit and its position, so `digits-seven` and the sevens of
`digits-all` share seeds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.eval import manifests
from harness.eval.manifests import SuiteKind

DIGITS_PER_CLASS = 50
_DIGIT_SUITE = re.compile(r"digits-([a-z]+?)(?:-(\d+))?")
_DIGIT_SEED_STRIDE = 100_000
_NEUTRAL_SEED_BASE = 10 * _DIGIT_SEED_STRIDE


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
    kind: SuiteKind
    records: tuple[PromptRecord, ...]
    metrics: tuple[str, ...]
    """The metrics this suite is scored with by default."""
    source: str
    """Where the records came from (a manifest path, or 'built-in')."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        """The distinct labels, in order of first appearance."""
        return list(dict.fromkeys(r.label for r in self.records if r.label is not None))


def list_suites() -> list[str]:
    """Every suite name: the manifests', then the built-in digit suites."""
    from harness.models.zoo.digits import DIGIT_NAMES

    return manifests.manifest_names() + ["digits-all", "digits-neutral"] + [f"digits-{n}" for n in DIGIT_NAMES]


def is_builtin(name: str) -> bool:
    """Whether `name` is a built-in digit suite (no file behind it)."""
    return _DIGIT_SUITE.fullmatch(name) is not None


def load_suite(name: str, data_dir: str | Path | None = None) -> Suite:
    """The suite `name`; manifest suites read their file from `data_dir` (see manifests.data_dir)
    after checking its sha256, columns and row count."""
    if is_builtin(name):
        return _digit_suite(name)
    if name not in manifests.manifest_names():
        raise HarnessError(f"unknown suite '{name}' (known: {', '.join(manifests.manifest_names())}, digits-*)")
    manifest = manifests.load_manifest(name)
    rows = manifests.read_rows(manifest, manifests.data_dir(data_dir))
    records = tuple(_record(manifest, index, row) for index, row in enumerate(rows))
    return Suite(name, manifest.kind, records, tuple(manifest.metrics), manifest.source)


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


def _digit_suite(name: str) -> Suite:
    from harness.models.zoo.digits import DIGIT_NAMES, NEUTRAL_PROMPTS, concept_prompts

    match = _DIGIT_SUITE.fullmatch(name)
    assert match is not None
    which, count_text = match.group(1), match.group(2)
    per_class = int(count_text) if count_text else DIGITS_PER_CLASS
    if per_class < 1 or per_class >= _DIGIT_SEED_STRIDE:
        raise HarnessError(f"suite {name}: prompts per digit must lie in 1..{_DIGIT_SEED_STRIDE - 1}")
    if which == "neutral":
        records = tuple(
            PromptRecord(i, NEUTRAL_PROMPTS[i % len(NEUTRAL_PROMPTS)], _NEUTRAL_SEED_BASE + i) for i in range(per_class)
        )
        return Suite(name, "digits", records, ("fid",), "built-in")
    if which == "all":
        digits = list(range(10))
    elif which in DIGIT_NAMES:
        digits = [DIGIT_NAMES.index(which)]
    else:
        raise HarnessError(
            f"unknown suite '{name}' (digit suites: digits-all, digits-neutral, digits-<{'|'.join(DIGIT_NAMES)}>)"
        )
    records = []
    for digit in digits:
        prompts = concept_prompts(digit)
        for i in range(per_class):
            records.append(
                PromptRecord(
                    len(records), prompts[i % len(prompts)], digit * _DIGIT_SEED_STRIDE + i, label=DIGIT_NAMES[digit]
                )
            )
    metrics = ("accuracy", "fid") if which == "all" else ("accuracy",)
    return Suite(name, "digits", tuple(records), metrics, "built-in")
