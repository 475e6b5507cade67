"""The matrix: for every method (rows) and attack (columns), the erased concept's accuracy with
its 95% interval and n, per suite that scores it; a cell without numbers says why."""

from __future__ import annotations

from harness.budgets import budget_note
from harness.layout import ModelRef
from harness.records import ResultRow
from harness.registry import table
from harness.report.cells import Cell, Table, slug
from harness.report.controls import control_lines, control_note
from harness.report.runs import RunData
from harness.stats import format_share


def cell_text(row: ResultRow | None) -> Cell:
    """`0.80 [0.49, 0.94] n=10 @300 steps (quick), rising; preserved 1.00`, or why the cell is empty."""
    if row is None:
        return None
    if row.status != "done":
        return row.status
    erased = format_share(row.erased_accuracy, row.n_erased, row.erased_ci) + budget_note(row.budget, row.rising)
    if row.preserved_accuracy is not None:
        return f"{erased}; preserved {row.preserved_accuracy:.2f}"
    return erased


@table("matrix", label="The matrix", absent="no suite scores the erased class")
def matrix_tables(runs: list[RunData]) -> list[Table]:
    """One table per run and suite whose rows measure the erased class."""
    tables = []
    for run in runs:
        methods = list(dict.fromkeys(m.method for m in run.models))
        attacks = list(dict.fromkeys(m.attack for m in run.models))
        for suite in run.suites:
            if not any(r.n_erased for r in run.results.rows if r.suite == suite):
                continue
            rows: list[list[Cell]] = [[method, *(cell_text(run.row(ModelRef(method, attack), suite))
                                                 for attack in attacks)] for method in methods]
            controls = run.results.controls
            heads = [a + ("*" if control_note(controls.get(a)) else "") for a in attacks]
            checks = [line.strip() for line in control_lines({a: v for a, v in controls.items() if a in attacks})]
            tables.append(Table(f"matrix_{slug(run.name)}_{slug(suite)}",
                                f"The matrix: erased-class accuracy after each attack ({run.name}, {suite})",
                                ["Method", *heads], rows,
                                [f"'{run.target}' accuracy [95% Wilson interval] n=images; preserved: the other "
                                 "classes' accuracy; @N steps: the attack's budget, with its preset when below the authors'; "
                                 "rising: its curve was still rising at its end; *: the attack did not break its positive "
                                 "control here, or the control is not in the run; the run's results hold every number",
                                 *checks]))
    return tables
