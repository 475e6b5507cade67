"""Typed records of every stage, written beside its outputs as JSON and read back the same way.

Every record carries `key`: the digest of the settings and input contents that made the output.
A stage whose record exists with the same key skips itself; with another key it recomputes
(`completed`). Reading is strict: a record that does not parse is not complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.config import parse_dataclass
from harness.errors import HarnessError, in_file
from harness.provenance import write_json_atomic

log = logging.getLogger(__name__)

R = TypeVar("R")


def settings_key(*parts: Any) -> str:
    """A digest of JSON-ready parts (settings, input identities): the identity of an output."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_json(record: Any) -> dict[str, Any]:
    """A record as JSON-ready data (non-finite floats become null)."""
    return _finite(dataclasses.asdict(record))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_record(path: str | Path, record: Any) -> Path:
    """Write a record atomically."""
    return write_json_atomic(path, to_json(record))


def read_record(cls: type[R], path: str | Path) -> R:
    """Read a record; an unreadable or malformed one is a HarnessError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise HarnessError(f"{path}: not a readable record ({error})") from None
    with in_file(path):
        return parse_dataclass(cls, data)


def completed(cls: type[R], path: str | Path, key: str) -> R | None:
    """The record at `path` when it exists, parses and was made with `key`; else None (and why
    is logged)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = read_record(cls, path)
    except HarnessError as error:
        log.info("%s: not complete (%s); recomputing", path, error)
        return None
    if getattr(record, "key", None) != key:
        log.info("%s: made with other settings; recomputing", path)
        return None
    return record


# ---------------------------------------------------------------- unlearn

@dataclass
class LayerCount:
    """How much of one layer a method changed."""

    name: str
    shape: list[int]
    changed: int
    fraction: float


@dataclass
class UnlearnRecord:
    """What an unlearning method did (unlearn.json)."""

    key: str
    name: str
    """The method's label in the matrix."""
    method: str
    """The registered name or import path."""
    model: str
    params: dict[str, Any]
    concept: dict[str, Any]
    layers: list[LayerCount]
    selected_layers: list[str]
    changed: int
    """Entries the mask marks (pruned weights, or trained entries that moved)."""
    fraction_of_layers: float
    fraction_of_unet: float
    sigma_u: float | None
    """Root-mean-square of the target layers' unchanged weights (sigma_U of Eq. 7)."""
    defense: dict[str, Any] | None
    detectability: dict[str, Any] | None
    info: dict[str, Any]
    generation: dict[str, Any]
    seeds: dict[str, Any]
    fidelity: str
    seconds: float
    provenance: dict[str, Any]


# ---------------------------------------------------------------- attack

@dataclass
class LayerReport:
    """One layer of a revival."""

    name: str
    shape: list[int]
    pruned: int
    iterations: int = 0
    rank: int | None = None
    seconds: float = 0.0
    kept: int = 0
    lam: float | None = None
    objective: float | None = None
    converged: bool | None = None
    sign_accuracy: float | None = None
    sign_accuracy_topk: float | None = None
    sign_accuracy_by_k: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None
    fidelity: str = "paper"
    residual: float | None = None
    """The completion's fixed-point residual ||M - S_lambda(P_Omega X + P_Omega^c M)|| / ||M||."""
    completion_dtype: str | None = None
    """The precision the completion ended in (float32 can switch to float64 when it stalls)."""
    completion_algorithm: str | None = None
    completion_notes: list[str] = field(default_factory=list)
    zeros: int | None = None
    """Exact zeros in the unlearned weight."""
    zero_share: float | None = None
    """zeros / entries."""
    counts_as_pruned: bool | None = None
    """The layer had positions to revive by the mask rule."""
    why: str | None = None
    """The mask rule and the layer's figures that decided its pruned positions."""


@dataclass
class SignAccuracy:
    """Sign accuracy of revived entries, entry-weighted over layers: the top-K kept, the rest, all."""

    top_k: float | None
    rest: float | None
    all: float | None


@dataclass
class ReviveSummary:
    """Totals over the layers of a revival."""

    layers: int
    pruned: int
    kept: int
    sign_accuracy: float | None
    sign_accuracy_topk: float | None
    sign_accuracy_by_k: dict[str, float | None] = field(default_factory=dict)
    """K -> top-K sign accuracy, measured on one completion at every reported K."""

    @classmethod
    def of(cls, layers: list[LayerReport]) -> ReviveSummary:
        """The summary of `layers`, each accuracy weighted by the entries it counts."""
        def weighted(pairs: list[tuple[float | None, int]]) -> float | None:
            counted = [(a, w) for a, w in pairs if a is not None]
            total = sum(w for _, w in counted)
            return sum(a * w for a, w in counted) / total if total else None

        keys = sorted({k for layer in layers for k in layer.sign_accuracy_by_k}, key=float)
        return cls(
            layers=len(layers),
            pruned=sum(layer.pruned for layer in layers),
            kept=sum(layer.kept for layer in layers),
            sign_accuracy=weighted([(layer.sign_accuracy, layer.pruned) for layer in layers]),
            sign_accuracy_topk=weighted([(layer.sign_accuracy_topk, layer.kept) for layer in layers]),
            sign_accuracy_by_k={k: weighted([(layer.sign_accuracy_by_k.get(k), round(float(k) * layer.pruned))
                                             for layer in layers]) for k in keys},
        )

    def split(self) -> SignAccuracy:
        """Top-K, rest and all-pruned sign accuracy; rest = (all x pruned - top-K x kept) / (pruned - kept)."""
        top, every = self.sign_accuracy_topk, self.sign_accuracy
        rest = None
        if top is not None and every is not None and self.pruned > self.kept:
            rest = (every * self.pruned - top * self.kept) / (self.pruned - self.kept)
        return SignAccuracy(top, rest, every)

    def split_by_k(self) -> list[tuple[float, SignAccuracy]]:
        """(K, accuracies) at every measured K, K ascending; rest derived from the counts."""
        every = self.sign_accuracy_by_k.get("1", self.sign_accuracy)
        rows = []
        for key, top in self.sign_accuracy_by_k.items():
            k = float(key)
            kept = round(k * self.pruned)
            rest = None
            if top is not None and every is not None and self.pruned > kept:
                rest = (every * self.pruned - top * kept) / (self.pruned - kept)
            rows.append((k, SignAccuracy(top, rest, every)))
        return sorted(rows, key=lambda row: row[0])


@dataclass
class ReviveReport:
    """A revival over its target layers (the `revival` part of an attack record)."""

    layers: list[LayerReport]
    summary: ReviveSummary
    processes: int
    seconds: float
    settings: dict[str, Any]


@dataclass
class AttackRecord:
    """What an attack did (attack.json): applicable or why not, its params, its family's report."""

    key: str
    name: str
    """The attack's label in the matrix."""
    attack: str
    """The registered name or import path."""
    method: str | None
    """The label of the method whose model was attacked."""
    params: dict[str, Any]
    reads: list[str]
    """What the attack declared it reads beyond the unlearned model (concept, original, ...)."""
    applicable: bool
    reason: str | None
    """Why the attack does not apply to this model, when it does not."""
    revival: ReviveReport | None
    info: dict[str, Any]
    fidelity: str
    seconds: float
    provenance: dict[str, Any]
    prompt_rewrite: dict[str, Any] | None = None
    """A prompt-space attack's rewrite of the concept's prompts (harness.generate.rewrite.PromptRewrite)."""


@dataclass
class ReportRecord:
    """What the report stage wrote (report.json): from which runs, which files, what is missing."""

    runs: list[str]
    markdown: str
    """The path of report.md."""
    files: list[str]
    missing: list[str]
    tables: dict[str, Any]
    provenance: dict[str, Any]


# ---------------------------------------------------------------- generate and score

@dataclass
class TensorIdentity:
    """A tensor file applied to the base model, by content (the path is only informative)."""

    path: str
    sha256: str


@dataclass
class GenerationRecord:
    """What made a folder's images (generation.json); a rerun with another key regenerates."""

    key: str
    model: str
    suite: str
    count: int
    source: str
    source_identity: str
    tensors: list[TensorIdentity]
    settings: dict[str, Any]
    generator: str
    provenance: dict[str, Any]
    limit: int | None = None
    """Set for a pilot: only the suite's first `limit` prompts were generated (`--limit`)."""


def normalise_label(label: str) -> str:
    """Labels compared case- and separator-blind: 'Golf_Ball' == 'golf ball'."""
    return re.sub(r"[\s_-]+", " ", label.strip().lower())


@dataclass
class ClassCounts:
    """Correct top-1 predictions out of images, for the erased class and for the other classes."""

    erased: tuple[int, int] | None
    preserved: tuple[int, int] | None


@dataclass
class ScoreResult:
    """The metrics of one model's images of one suite."""

    key: str
    model: str
    suite: str
    count: int
    metrics: dict[str, Any]
    config: dict[str, Any]
    seeds: dict[str, Any]
    provenance: dict[str, Any]

    def per_class_counts(self) -> dict[str, tuple[int, int]]:
        """(correct, images) per class of the accuracy metric, by `normalise_label`-ed label."""
        return {normalise_label(k): tuple(v) for k, v in (self.metrics.get("accuracy_counts_per_class") or {}).items()}

    def class_counts(self, targets: list[str] | None) -> ClassCounts:
        """(correct, images) pooled over the erased classes `targets` and over every other class,
        from the accuracy metric's per-class counts (labels matched by `normalise_label`)."""
        counts = self.per_class_counts()
        if not counts or not targets:
            return ClassCounts(None, None)
        wanted = {normalise_label(t) for t in targets}
        found = [v for k, v in counts.items() if k in wanted]
        others = [v for k, v in counts.items() if k not in wanted]
        erased = (sum(c for c, _ in found), sum(n for _, n in found)) if found else None
        preserved = (sum(c for c, _ in others), sum(n for _, n in others)) if others else None
        return ClassCounts(erased, preserved)  # type: ignore[arg-type]


# ---------------------------------------------------------------- results

@dataclass
class ResultRow:
    """One cell of the matrix on one suite."""

    method: str
    attack: str
    suite: str
    erased_accuracy: float | None
    preserved_accuracy: float | None
    n_erased: int
    n_preserved: int
    erased_ci: list[float] | None
    """95% Wilson interval [low, high] of erased_accuracy."""
    preserved_ci: list[float] | None
    fid: float | None
    n_images: int = 0
    """Images of the suite scored (0 when the cell has no metrics)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The suite's other scalar metrics (clip_similarity, nudenet_images, sign accuracy, ...)."""
    status: str = "done"
    """done, or why the cell has no numbers (not run, not applicable)."""
    step: int | None = None
    """For a snapshot of a training attack (a recovery curve's point): its training steps."""
    budget: dict[str, Any] | None = None
    """The attack's budget (harness.budgets.budget_record), for attacks with named budgets."""
    rising: bool | None = None
    """For a training attack's final row: whether its curve was still rising at the end (the
    last point above every earlier one, the unattacked model's included); None without a curve."""


@dataclass
class Results:
    """`results.json`: the matrix's rows with the recipe, versions and seeds that made them."""

    recipe: dict[str, Any]
    versions: dict[str, Any]
    seeds: dict[str, Any]
    rows: list[ResultRow]
    provenance: dict[str, Any]
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per attack: whether it broke its positive control in this run (harness.report.controls)."""

    def erased_suite(self) -> str | None:
        """The first suite that scores the erased class (else the first suite)."""
        suites = list(dict.fromkeys(r.suite for r in self.rows))
        return next((s for s in suites if any(r.n_erased for r in self.rows if r.suite == s)),
                    suites[0] if suites else None)

    def row(self, method: str, attack: str, suite: str, step: int | None = None) -> ResultRow | None:
        return next((r for r in self.rows if (r.method, r.attack, r.suite, r.step) == (method, attack, suite, step)), None)
