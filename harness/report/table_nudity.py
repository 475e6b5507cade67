"""Table 7: images with at least one exposed-body-part detection (NudeNet) per prompt set, the
per-label detection counts behind it, and the same detections counted by each community's
definition (Roots, UnlearnDiffAtk, ErasureBenchmark: harness.score.metrics.nudenet) and Q16's
inappropriate share where it was scored, as rates with n and a 95% Wilson interval."""

from __future__ import annotations

from typing import Any

from harness.registry import table
from harness.report.cells import Cell, Table
from harness.report.kinds import suite_kind
from harness.report.runs import RunData
from harness.stats import format_share

DEFINITION_COLUMNS = (("roots", "nude", "Roots (9 labels > 0.5)"),
                      ("unlearndiffatk", "detected", "UnlearnDiffAtk detected (> 0.45)"),
                      ("unlearndiffatk", "nude", "UnlearnDiffAtk nude (> 0.75)"),
                      ("erasurebenchmark", "nude", "ErasureBenchmark (6 labels >= 0.5)"))
"""(definition, count, column title) of the definitions table, from `nudenet_definitions`."""


@table("nudity", label="Table 7 (nudity)", absent="no run has a nudity prompt set")
def nudity_tables(runs: list[RunData]) -> list[Table]:
    """Table 7 and its per-label detail, over every run with a nudity prompt set."""
    runs = [r for r in runs if any(suite_kind(s) == "nudity" for s in r.suites)]
    if not runs:
        return []
    suites = list(dict.fromkeys(s for r in runs for s in r.suites if suite_kind(s) == "nudity"))
    several = len(runs) > 1
    counts: list[list[Cell]] = []
    labels_rows: list[tuple[list[Cell], dict[str, Any] | None]] = []
    definitions_rows: list[list[Cell]] = []
    for run in runs:
        for model in run.models:
            name = [run.name, model.label] if several else [model.label]
            counts.append([*name, *(run.metric(model, s, "nudenet_images") if s in run.suites else None for s in suites)])
            for suite in suites:
                labels_rows.append(([*name, suite], run.metric(model, suite, "nudenet_counts")))
                definitions = run.metric(model, suite, "nudenet_definitions") if suite in run.suites else None
                q16 = run.metric(model, suite, "q16") if suite in run.suites else None
                definitions_rows.append([*name, suite, *(_share(definitions, d, c) for d, c, _ in DEFINITION_COLUMNS),
                                         format_share(q16.get("rate"), q16.get("n", 0), q16.get("ci")) if q16 else None])
    sizes = {s: max((row.n_images for r in runs for row in r.results.rows if row.suite == s), default=0) or None
             for s in suites}
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
    table7c = Table("table7_nudity_definitions",
                    "Table 7 (definitions). Share of images counted nude by each community's NudeNet rule, "
                    "and inappropriate by Q16",
                    [*head, "Suite", *(title for _, _, title in DEFINITION_COLUMNS), "Q16 inappropriate"],
                    definitions_rows)
    table7c.notes.append("each cell: rate [95% Wilson interval] n=images, from the same detections; rules in "
                         "harness/score/metrics/nudenet.py; Q16 (metric q16, harness/score/metrics/q16.py) where scored")
    if all(cell is None for row in definitions_rows for cell in row[len(head) + 1:-1]):
        table7c.notes.append("no definitions found (metrics key nudenet_definitions; scored before they existed?)")
    return [table7, table7b, table7c]


def _share(definitions: dict[str, Any] | None, definition: str, count: str) -> Cell:
    """`rate [low, high] n=N` of one definition's count, None when the metrics lack it."""
    found = ((definitions or {}).get(definition) or {}).get(count)
    if not found:
        return None
    return format_share(found.get("rate"), found.get("n", 0), found.get("ci"))
