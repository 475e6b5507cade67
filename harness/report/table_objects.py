"""Table 1: top-1 accuracy of the erased class and of the preserved classes, one row per run
(the erased class), one column pair per model of the matrix."""

from __future__ import annotations

from harness.layout import ModelRef
from harness.registry import table
from harness.report.cells import Cell, Table, average_row
from harness.report.kinds import is_class_run
from harness.report.runs import RunData


def class_suites(run: RunData) -> tuple[str | None, str | None]:
    """(suite holding the erased class's images, suite with the most preserved images), from any model."""
    rows = run.results.rows
    erased = next((s for s in run.suites if any(r.n_erased for r in rows if r.suite == s)), None)
    counts = {s: max((r.n_preserved for r in rows if r.suite == s), default=0) for s in run.suites}
    preserved = max((s for s in run.suites if counts[s]), key=lambda s: counts[s], default=None)
    return erased, preserved


def class_accuracy(run: RunData, model: ModelRef) -> tuple[float | None, float | None]:
    """(erased-class accuracy, accuracy over the other classes) of `model`."""
    erased_suite, preserved_suite = class_suites(run)
    erased_row = run.row(model, erased_suite) if erased_suite else None
    preserved_row = run.row(model, preserved_suite) if preserved_suite else None
    return (erased_row.erased_accuracy if erased_row else None,
            preserved_row.preserved_accuracy if preserved_row else None)


def union_models(runs: list[RunData]) -> list[ModelRef]:
    """Every model of the runs, first-seen order (a recovery curve's snapshots left out)."""
    return list(dict.fromkeys(m for run in runs for m in run.models if m.step is None))


@table("objects", label="Table 1 (classes)", absent="no run erases an object or a class")
def objects_table(runs: list[RunData]) -> Table | None:
    """Table 1: erased- and preserved-class top-1 accuracy, one row per erased class."""
    runs = [r for r in runs if is_class_run(r)]
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
    key = "table1_objects" if any(r.concept_kind == "object" for r in runs) else "table1_classes"
    return Table(key, "Table 1. Top-1 accuracy of the erased class and the preserved classes", columns, rows, notes)
