"""Table 1: top-1 accuracy of the erased class and of the preserved classes, one row per model of
the matrix (pretrained, each method, each attack on it) and one column pair per erased class, so
that a matrix of many models stays a table a person reads down."""

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
    """Table 1: erased- and preserved-class top-1 accuracy, one row per model of the matrix and
    a column pair per erased class (run), with their average when there are several."""
    runs = [r for r in runs if is_class_run(r)]
    if not runs:
        return None
    models = union_models(runs)
    several = len(runs) > 1
    heads = [f"{run.name}: {run.target}" if several else str(run.target) for run in runs]
    rows: list[list[Cell]] = []
    for model in models:
        pairs = [class_accuracy(run, model) if model in run.models else (None, None) for run in runs]
        row: list[Cell] = [str(model), *(value for pair in pairs for value in pair)]
        if several:
            row += average_row("", [["", erased, preserved] for erased, preserved in pairs])[1:]
        rows.append(row)
    notes = []
    for run in runs:
        erased_suite, preserved_suite = class_suites(run)
        notes.append(f"{run.name}: erased class '{run.target}' from suite {erased_suite or 'missing'}, "
                     f"preserved classes from suite {preserved_suite or 'missing'}")
    columns = ["Model", *(f"{head}: {part}" for head in heads for part in ("erased", "preserved"))]
    if several:
        columns += ["Average: erased", "Average: preserved"]
    key = "table1_objects" if any(r.concept_kind == "object" for r in runs) else "table1_classes"
    return Table(key, "Table 1. Top-1 accuracy of the erased class and the preserved classes (a row per model)",
                 columns, rows, notes)
