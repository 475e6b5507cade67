"""The paper's tables built from run directories: values only where a file holds them.

Table 1 (objects), Table 2 (artists), Table 7 (nudity counts), Table 3 (Top-K x magnitude),
Table 6 (sign accuracy of the top-K by magnitude) and the defense trade-off. A cell with no
source is None, which the writers print as `missing`.
"""

from __future__ import annotations

import functools
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.eval.report_runs import RunData
from harness.experiment.plan import REVIVED_PREFIX, UNLEARNED

Cell = str | int | float | None
MAGNITUDE_ORDER = ("sample", "average", "nms", "align")


@dataclass
class Table:
    """A titled table; `key` names its CSV file."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=None)
def suite_kind(name: str) -> str | None:
    """A suite's kind (objects, artists, nudity, captions, digits) from its manifest, or None."""
    from harness.eval import manifests, suites

    if suites.is_builtin(name):
        return "digits"
    if name in manifests.manifest_names():
        return manifests.load_manifest(name).kind
    return None


def normalise(label: str) -> str:
    """Labels compared case- and separator-blind: 'Golf_Ball' == 'golf ball'."""
    return re.sub(r"[\s_-]+", " ", label.strip().lower())


def union_models(runs: list[RunData]) -> list[str]:
    """Every model of the runs, first-seen order."""
    return list(dict.fromkeys(m for run in runs for m in run.models))


# ---------------------------------------------------------------- class accuracy (objects, digits)

def per_class(run: RunData, model: str, suite: str) -> dict[str, float] | None:
    values = run.metric(model, suite, "accuracy_per_class")
    return None if values is None else {normalise(k): v for k, v in values.items()}


def class_suites(run: RunData) -> tuple[str | None, str | None]:
    """(suite holding the target's accuracy, suite with the most other classes), from any model."""
    if run.target is None:
        return None, None
    target = normalise(run.target)
    erased = preserved = None
    best = 0
    for suite in run.suites:
        classes = set().union(*(per_class(run, m, suite) or {} for m in run.models))
        if target in classes and erased is None:
            erased = suite
        others = len(classes - {target})
        if others > best:
            preserved, best = suite, others
    return erased, preserved


def class_accuracy(run: RunData, model: str) -> tuple[float | None, float | None]:
    """(erased-class accuracy, mean accuracy over the other classes) of `model`."""
    erased_suite, preserved_suite = class_suites(run)
    target = normalise(run.target or "")
    erased = preserved = None
    if erased_suite is not None:
        erased = (per_class(run, model, erased_suite) or {}).get(target)
    if preserved_suite is not None:
        values = [v for k, v in (per_class(run, model, preserved_suite) or {}).items() if k != target]
        preserved = statistics.fmean(values) if values else None
    return erased, preserved


def _is_class_run(run: RunData) -> bool:
    return run.concept_kind in ("object", "digit") or (run.concept_kind is None and class_suites(run)[0] is not None)


def objects_table(runs: list[RunData]) -> Table | None:
    """Table 1: erased- and preserved-class top-1 accuracy, one row per erased class."""
    runs = [r for r in runs if _is_class_run(r)]
    if not runs:
        return None
    models = union_models(runs)
    labels = ["Run", "Class"] if len(runs) > 1 else ["Class"]
    rows: list[list[Cell]] = []
    notes = []
    for run in runs:
        pairs = [class_accuracy(run, m) if m in run.models else (None, None) for m in models]
        label = [run.name, run.target] if len(runs) > 1 else [run.target]
        rows.append([*label, *(p[0] for p in pairs), *(p[1] for p in pairs)])
        erased_suite, preserved_suite = class_suites(run)
        notes.append(f"{run.name}: erased class '{run.target}' from suite {erased_suite or 'missing'}, "
                     f"preserved classes from suite {preserved_suite or 'missing'}")
    if len(runs) > 1:
        rows.append(["Average", *average_row("", [row[1:] for row in rows])])
    columns = [*labels, *(f"erased: {m}" for m in models), *(f"preserved: {m}" for m in models)]
    return Table("table1_objects", "Table 1. Top-1 accuracy of the erased class and the preserved classes",
                 columns, rows, notes)


def average_row(label: str, rows: list[list[Cell]]) -> list[Cell]:
    """Column means; a column with any missing (or non-numeric) cell stays missing."""
    out: list[Cell] = [label]
    for column in zip(*(row[1:] for row in rows)):
        numbers = [v for v in column if isinstance(v, (int, float))]
        out.append(statistics.fmean(numbers) if len(numbers) == len(column) else None)
    return out


# ---------------------------------------------------------------- artists (Table 2)

def _label_value(run: RunData, model: str, suite: str | None, key: str) -> float | None:
    """`key` for the run's target within `suite`: the per-label value `<key>_per_class`."""
    if suite is None or run.target is None:
        return None
    values = run.metric(model, suite, f"{key}_per_class")
    if not isinstance(values, dict):
        return None
    return {normalise(k): v for k, v in values.items()}.get(normalise(run.target))


def _first_suite(run: RunData, kind: str, key: str) -> str | None:
    """The first suite of `kind` whose metrics hold `key` for some model (else the first of `kind`)."""
    candidates = [s for s in run.suites if suite_kind(s) == kind]
    for suite in candidates:
        if any(run.metric(m, suite, key) is not None for m in run.models):
            return suite
    return candidates[0] if candidates else None


def artists_table(runs: list[RunData]) -> Table | None:
    """Table 2: style CLIP similarity and CLIP score on the erased artist's prompts, COCO FID
    and CLIP similarity, per artist and model."""
    runs = [r for r in runs if r.concept_kind == "artist"]
    if not runs:
        return None
    rows: list[list[Cell]] = []
    notes = []
    per_model: dict[str, list[list[Cell]]] = {}
    for run in runs:
        style = next((s for s in run.suites if suite_kind(s) == "artists"), None)
        fid_suite = _first_suite(run, "captions", "fid")
        sim_suite = _first_suite(run, "captions", "clip_similarity")
        notes.append(f"{run.name}: style from suite {style or 'missing'} (prompts of '{run.target}'), "
                     f"FID from {fid_suite or 'missing'}, COCO similarity from {sim_suite or 'missing'}")
        for model in run.models:
            values = [_label_value(run, model, style, "clip_similarity"), _label_value(run, model, style, "clip_score"),
                      run.metric(model, fid_suite, "fid") if fid_suite else None,
                      run.metric(model, sim_suite, "clip_similarity") if sim_suite else None]
            rows.append([run.target or run.name, model, *values])
            per_model.setdefault(model, []).append([model, *values])
    if not any(row[2] is not None or row[3] is not None for row in rows):
        notes.append("per-artist style values need `clip_similarity_per_class` / `clip_score_per_class` "
                     "(by label) in the artists metrics; the suite-wide mean over all artists is not Table 2's number")
    if len(runs) > 1:
        rows += [["Average", *average_row(model, group)] for model, group in per_model.items()]
    columns = ["Artist", "Model", "style CLIP similarity", "style CLIP score", "COCO FID", "COCO CLIP similarity"]
    return Table("table2_artists", "Table 2. Artist styles and COCO quality", columns, rows, notes)


# ---------------------------------------------------------------- nudity (Table 7)

def nudity_tables(runs: list[RunData]) -> list[Table]:
    """Table 7 (images with at least one exposed-body-part detection, per prompt set) and the
    per-label detection counts behind it."""
    runs = [r for r in runs if any(suite_kind(s) == "nudity" for s in r.suites)]
    if not runs:
        return []
    suites = list(dict.fromkeys(s for r in runs for s in r.suites if suite_kind(s) == "nudity"))
    several = len(runs) > 1
    counts: list[list[Cell]] = []
    labels_rows: list[tuple[list[Cell], dict[str, Any] | None]] = []
    for run in runs:
        for model in run.models:
            name = [run.name, model] if several else [model]
            counts.append([*name, *(run.metric(model, s, "nudenet_images") if s in run.suites else None for s in suites)])
            for suite in suites:
                labels_rows.append(([*name, suite], run.metric(model, suite, "nudenet_counts")))
    sizes = {s: next((r.suite_count(s) for r in runs if r.suite_count(s)), None) for s in suites}
    head = ["Run", "Model"] if several else ["Model"]
    table7 = Table("table7_nudity", "Table 7. Images with nudity detected (NudeNet), per prompt set",
                   [*head, *(f"{s} ({sizes[s]})" if sizes[s] else s for s in suites)], counts)
    labels = sorted({label for _, c in labels_rows if c for label in c})
    table7b = Table("table7_nudity_labels", "Table 7 (detail). NudeNet detections per label",
                    [*head, "Suite", *labels],
                    [[*name, *((c or {}).get(label, 0) if c is not None else None for label in labels)]
                     for name, c in labels_rows])
    if not labels:
        table7b.notes.append("no per-label counts found (metrics key nudenet_counts)")
    return [table7, table7b]


# ---------------------------------------------------------------- ablations (Table 3, Table 6)

def attack_variants(run: RunData) -> list[str]:
    """Variants that run the attack itself (not quant4 or an ideal case)."""
    return [v for v in run.variants if v in run.settings and run.settings[v].strategy == "attack"]


def ablation_tables(runs: list[RunData]) -> list[Table]:
    """Table 3 per class run: erased-class accuracy of each (Top-K, magnitude) variant."""
    tables = []
    for run in runs:
        variants = attack_variants(run)
        if not _is_class_run(run) or not variants:
            continue
        grid: dict[tuple[float, str], str] = {}
        for v in variants:
            grid.setdefault((run.settings[v].top_k, run.settings[v].magnitude), v)
        ks = sorted({k for k, _ in grid}, reverse=True)
        mags = sorted({m for _, m in grid}, key=MAGNITUDE_ORDER.index)
        rows = [[f"Top {k:g}", *(class_accuracy(run, REVIVED_PREFIX + grid[(k, m)])[0] if (k, m) in grid else None
                                 for m in mags)] for k in ks]
        notes = [f"erased-class accuracy ('{run.target}') of model revived-<variant>; variants: "
                 + ", ".join(f"{grid[key]} = (K {key[0]:g}, {key[1]})" for key in sorted(grid))]
        tables.append(Table(f"table3_topk_magnitude_{slug(run.name)}",
                            f"Table 3. Effect of Top-K and magnitudes on {run.target} revival ({run.name})",
                            ["Top-K retention", *mags], rows, notes))
    return tables


def sign_accuracy(report: dict[str, Any] | None) -> tuple[float | None, float | None, float | None]:
    """(top-K, rest, all) sign accuracy over a revive report's layers, entry-weighted.

    Rest is derived from the two measured counts: (all * pruned - topk * kept) / (pruned - kept).
    """
    layers = [layer for layer in (report or {}).get("layers", []) if layer.get("sign_accuracy") is not None]
    if not layers:
        return None, None, None
    pruned = sum(layer["pruned"] for layer in layers)
    kept = sum(layer.get("kept", 0) for layer in layers)
    correct_all = sum(layer["sign_accuracy"] * layer["pruned"] for layer in layers)
    correct_top = sum((layer.get("sign_accuracy_topk") or 0.0) * layer.get("kept", 0) for layer in layers)
    top = correct_top / kept if kept else None
    rest = (correct_all - correct_top) / (pruned - kept) if pruned > kept else None
    return top, rest, correct_all / pruned


def sign_rows_by_k(report: dict[str, Any] | None) -> list[tuple[float, tuple[float | None, float | None, float | None]]]:
    """(K, accuracies) from a revive report's measured `summary.sign_accuracy_by_k` (one completion,
    every K); rest is derived from the top-K and all-pruned accuracies and the counts."""
    summary = (report or {}).get("summary", {})
    by_k = summary.get("sign_accuracy_by_k") or {}
    every, pruned = by_k.get("1"), summary.get("pruned", 0)
    rows = []
    for key, top in by_k.items():
        k = float(key)
        kept = round(k * pruned)
        rest = (every * pruned - top * kept) / (pruned - kept) if None not in (every, top) and pruned > kept else None
        rows.append((k, (top, rest, every)))
    return sorted(rows)


def sign_rows(run: RunData) -> list[tuple[float, str, tuple[float | None, float | None, float | None]]]:
    """(K, variant, accuracies) for each K: measured at every K when the report has them, else one
    row per distinct K among the run's attack variants, K ascending."""
    for v in attack_variants(run):
        measured = sign_rows_by_k(run.revive.get(v))
        if measured:
            return [(k, v, values) for k, values in measured]
    seen: dict[float, tuple[str, tuple[float | None, float | None, float | None]]] = {}
    for v in attack_variants(run):
        k = run.settings[v].top_k
        values = sign_accuracy(run.revive.get(v))
        if k not in seen or (seen[k][1][0] is None and values[0] is not None):
            seen[k] = (v, values)
    return [(k, v, values) for k, (v, values) in sorted(seen.items())]


def sign_tables(runs: list[RunData]) -> list[Table]:
    """Table 6 per run: sign accuracy of the top-K completed values by magnitude and of the rest."""
    tables = []
    for run in runs:
        rows_data = sign_rows(run)
        if not rows_data:
            continue
        rows: list[list[Cell]] = [[k, top, rest if k < 1 else "n/a (K = 1)", every, v]
                                  for k, v, (top, rest, every) in rows_data]
        notes = ["top-K measured per K on one completion when the revive report has sign_accuracy_by_k; "
                 "rest = (all x pruned - top-K x kept) / (pruned - kept) from the counts"]
        if all(values[0] is None for _, _, values in rows_data):
            notes.append("no sign accuracy recorded: the revival needs the original weights (attack.original)")
        tables.append(Table(f"table6_sign_accuracy_{slug(run.name)}",
                            f"Table 6. Sign accuracy of the top-K recovered weights by magnitude ({run.name})",
                            ["K", "Top-K sign accuracy", "Rest (1-K) sign accuracy", "All pruned", "Variant"],
                            rows, notes))
    return tables


# ---------------------------------------------------------------- defense trade-off

@dataclass
class DefensePoint:
    """One run of the defense sweep: its sigma_M (None = no defense) and accuracies."""

    run: RunData
    sigma: float | None
    unlearned: tuple[float | None, float | None]
    revived_model: str | None
    revived: tuple[float | None, float | None]


def defense_points(runs: list[RunData]) -> dict[str, list[DefensePoint]]:
    """target -> its runs (undefended first, then by sigma), when any run of that target is defended."""
    groups: dict[str, list[DefensePoint]] = {}
    for run in runs:
        if not _is_class_run(run):
            continue
        attack = attack_variants(run)
        revived = REVIVED_PREFIX + attack[0] if attack else None
        point = DefensePoint(run, run.sigma, class_accuracy(run, UNLEARNED), revived,
                             class_accuracy(run, revived) if revived else (None, None))
        groups.setdefault(run.target or run.name, []).append(point)
    return {target: sorted(points, key=lambda p: (p.sigma is not None, p.sigma or 0.0))
            for target, points in groups.items() if any(p.sigma is not None for p in points)}


def defense_table(runs: list[RunData]) -> Table | None:
    """Erased/preserved accuracy of the unlearned and the revived model against sigma_M, with the
    detectability p(w = sigma_M) of Eq. 7 recorded by the unlearning stage."""
    groups = defense_points(runs)
    if not groups:
        return None
    rows: list[list[Cell]] = []
    for target, points in groups.items():
        for p in points:
            record = (p.run.unlearn or {}).get("detectability") or {}
            rows.append([target, p.sigma if p.sigma is not None else "none", *p.unlearned, p.revived_model, *p.revived,
                         record.get("p_at_w_sigma_m"), record.get("exact_zeros")])
    columns = ["Class", "sigma_M", "unlearned erased", "unlearned preserved", "attack model",
               "attacked erased", "attacked preserved", "p(w = sigma_M)", "exact zeros"]
    notes = ["attack model: the first variant with strategy 'attack' of each run",
             "p(w = sigma_M): Eq. 7 at w = sigma_M, as unlearn.json records it (defended runs only)"]
    return Table("defense_tradeoff", "Defense trade-off: Gaussian obfuscation sigma_M", columns, rows, notes)


def metrics_table(runs: list[RunData]) -> Table | None:
    """Every scalar metric of every (model, suite) the runs hold, for what the paper's tables leave out
    (e.g. FID of the digits world)."""
    keys = list(dict.fromkeys(k for run in runs for record in run.metrics.values()
                              for k, v in record.get("metrics", {}).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not keys:
        return None
    rows: list[list[Cell]] = [[run.name, model, suite, (run.metrics.get((model, suite)) or {}).get("count"),
                               *(run.metric(model, suite, k) for k in keys)]
                              for run in runs for model in run.models for suite in run.suites]
    return Table("metrics", "All scalar metrics per model and suite", ["Run", "Model", "Suite", "Images", *keys], rows)


def all_tables(runs: list[RunData]) -> tuple[list[Table], list[str]]:
    """Every table that applies to the runs, in the paper's order, and a line per table that
    does not apply (why)."""
    tables: list[Table] = []
    absent: list[str] = []
    builders: list[tuple[str, Callable[[list[RunData]], Any], str]] = [
        ("Table 1 (objects)", objects_table, "no run erases an object or a digit"),
        ("Table 2 (artists)", artists_table, "no run erases an artist"),
        ("Table 7 (nudity)", nudity_tables, "no run has a nudity prompt set"),
        ("Table 3 (Top-K x magnitude)", ablation_tables, "no class run with an attack variant"),
        ("Table 6 (sign accuracy)", sign_tables, "no run with an attack variant"),
        ("Defense trade-off", defense_table, "no run with unlearn.defense (give defended run directories)"),
        ("All scalar metrics", metrics_table, "no metrics files"),
    ]
    for label, build, why in builders:
        built = build(runs)
        found = [t for t in (built if isinstance(built, list) else [built]) if t is not None]
        tables += found
        if not found:
            absent.append(f"{label}: {why}")
    return tables, absent


def slug(name: str) -> str:
    """A file-name-safe form of a run or suite name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run"
