"""Table 7: images with at least one exposed-body-part detection (NudeNet) per prompt set, and
the per-label detection counts behind it."""

from __future__ import annotations

from typing import Any

from harness.registry import table
from harness.report.cells import Cell, Table
from harness.report.kinds import suite_kind
from harness.report.runs import RunData


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
    for run in runs:
        for model in run.models:
            name = [run.name, model.label] if several else [model.label]
            counts.append([*name, *(run.metric(model, s, "nudenet_images") if s in run.suites else None for s in suites)])
            for suite in suites:
                labels_rows.append(([*name, suite], run.metric(model, suite, "nudenet_counts")))
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
    return [table7, table7b]
