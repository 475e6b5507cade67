"""Table 2: style CLIP similarity and CLIP score on the erased artist's prompts, COCO FID and
CLIP similarity, per artist and model."""

from __future__ import annotations

from harness.layout import ModelRef
from harness.records import normalise_label
from harness.registry import table
from harness.report.cells import Cell, Table, average_row
from harness.report.kinds import suite_kind
from harness.report.runs import RunData


def label_value(run: RunData, model: ModelRef, suite: str | None, key: str) -> float | None:
    """`key` for the run's target within `suite`: the per-label value `<key>_per_class`."""
    if suite is None or run.target is None:
        return None
    values = run.metric(model, suite, f"{key}_per_class")
    if not isinstance(values, dict):
        return None
    return {normalise_label(k): v for k, v in values.items()}.get(normalise_label(run.target))


def first_suite(run: RunData, kind: str, key: str) -> str | None:
    """The first suite of `kind` whose metrics hold `key` for some model (else the first of `kind`)."""
    candidates = [s for s in run.suites if suite_kind(s) == kind]
    for suite in candidates:
        if any(run.metric(m, suite, key) is not None for m in run.models):
            return suite
    return candidates[0] if candidates else None


@table("artists", label="Table 2 (artists)", absent="no run erases an artist")
def artists_table(runs: list[RunData]) -> Table | None:
    """Table 2, one row per (artist, model), with an average per model over several runs."""
    runs = [r for r in runs if r.concept_kind == "artist"]
    if not runs:
        return None
    rows: list[list[Cell]] = []
    notes = []
    per_model: dict[str, list[list[Cell]]] = {}
    for run in runs:
        style = next((s for s in run.suites if suite_kind(s) == "artists"), None)
        fid_suite = first_suite(run, "captions", "fid")
        sim_suite = first_suite(run, "captions", "clip_similarity")
        notes.append(f"{run.name}: style from suite {style or 'missing'} (prompts of '{run.target}'), "
                     f"FID from {fid_suite or 'missing'}, COCO similarity from {sim_suite or 'missing'}")
        for model in run.models:
            values = [label_value(run, model, style, "clip_similarity"), label_value(run, model, style, "clip_score"),
                      run.metric(model, fid_suite, "fid"), run.metric(model, sim_suite, "clip_similarity")]
            rows.append([run.target or run.name, model.label, *values])
            per_model.setdefault(model.label, []).append([model.label, *values])
    if not any(row[2] is not None or row[3] is not None for row in rows):
        notes.append("per-artist style values need `clip_similarity_per_class` / `clip_score_per_class` "
                     "(by label) in the artists metrics; the suite-wide mean over all artists is not Table 2's number")
    if len(runs) > 1:
        rows += [["Average", *average_row(model, group)] for model, group in per_model.items()]
    columns = ["Artist", "Model", "style CLIP similarity", "style CLIP score", "COCO FID", "COCO CLIP similarity"]
    return Table("table2_artists", "Table 2. Artist styles and COCO quality", columns, rows, notes)
