"""Every scalar metric of every (model, suite), for what the paper's tables leave out (e.g. the
miniature world's FID)."""

from __future__ import annotations

from harness.layout import ModelRef
from harness.registry import table
from harness.report.cells import NOT_APPLICABLE, Cell, Table
from harness.report.runs import RunData


@table("metrics", label="All scalar metrics", absent="no metrics files")
def metrics_table(runs: list[RunData]) -> Table | None:
    """One row per (run, model, suite) with the images scored and each scalar metric."""
    rows_all = [row for run in runs for row in run.results.rows]
    keys = list(dict.fromkeys(k for row in rows_all for k, v in row.metrics.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)))
    keys += ["fid"] if any(row.fid is not None for row in rows_all) else []
    if not keys:
        return None
    rows: list[list[Cell]] = []
    for run in runs:
        for model in run.models:
            for suite in run.suites:
                row = run.row(model, suite)
                images = row.n_images if row is not None and row.n_images else None
                rows.append([run.name, model.label, suite, images, *(_cell(run, model, suite, k) for k in keys)])
    return Table("metrics", "All scalar metrics per model and suite", ["Run", "Model", "Suite", "Images", *keys], rows)


def _cell(run: RunData, model: ModelRef, suite: str, key: str) -> Cell:
    """The metric, `n/a` where the cell was scored but the metric does not apply to it, else missing."""
    row = run.row(model, suite)
    if row is None or row.status != "done":
        return None
    value = run.metric(model, suite, key)
    return NOT_APPLICABLE if value is None else value
