"""Table 6: sign accuracy of the top-K recovered weights by magnitude, and of the rest, one table
per (run, method)."""

from __future__ import annotations

from harness.records import SignAccuracy
from harness.registry import table
from harness.report.cells import NOT_APPLICABLE, Cell, Table, slug
from harness.report.runs import RunData
from harness.report.table_ablation import methods_of, revival_models


def sign_rows(run: RunData, method: str) -> list[tuple[float, str, SignAccuracy]]:
    """(K, attack, accuracies) for each K: measured at every K when an attack's record has them,
    else one row per distinct K among the method's revival attacks, K ascending."""
    models = revival_models(run, method)
    for model, _ in models:
        record = run.attacks.get(model)
        measured = record.revival.summary.split_by_k() if record and record.revival else []
        if measured:
            return [(k, model.attack, values) for k, values in measured]
    seen: dict[float, tuple[str, SignAccuracy]] = {}
    for model, settings in models:
        record = run.attacks.get(model)
        values = record.revival.summary.split() if record and record.revival else SignAccuracy(None, None, None)
        k = settings["top_k"]
        if k not in seen or (seen[k][1].top_k is None and values.top_k is not None):
            seen[k] = (model.attack, values)
    return [(k, attack, values) for k, (attack, values) in sorted(seen.items())]


@table("signs", label="Table 6 (sign accuracy)", absent="no run with a revival attack")
def sign_tables(runs: list[RunData]) -> list[Table]:
    """Table 6 per run and method with revival attacks."""
    tables = []
    for run in runs:
        for method in methods_of(run):
            rows_data = sign_rows(run, method)
            if not rows_data:
                continue
            rows: list[list[Cell]] = [[k, v.top_k, v.rest if k < 1 else NOT_APPLICABLE + " (K = 1)", v.all, attack]
                                      for k, attack, v in rows_data]
            notes = ["top-K measured per K on one completion when the attack's record has sign_accuracy_by_k; "
                     "rest = (all x pruned - top-K x kept) / (pruned - kept) from the counts"]
            if all(v.top_k is None for _, _, v in rows_data):
                notes.append("no sign accuracy recorded: the revival measures it against the original weights")
            tables.append(Table(f"table6_sign_accuracy_{slug(run.name)}_{slug(method)}",
                                f"Table 6. Sign accuracy of the top-K recovered weights by magnitude ({run.name}, {method})",
                                ["K", "Top-K sign accuracy", "Rest (1-K) sign accuracy", "All pruned", "Attack"],
                                rows, notes))
    return tables
