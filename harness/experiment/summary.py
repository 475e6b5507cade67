"""What the main command prints, read from results.json: the matrix (methods x attacks, the
erased class's accuracy with its 95% interval and n in each cell), then per model the erased and
preserved classes' accuracy (with n and 95% intervals), FID and the revival's sign accuracy; a
cell without numbers says why."""

from __future__ import annotations

from harness.budgets import budget_note
from harness.records import ResultRow, Results
from harness.report.controls import control_lines, control_note
from harness.stats import format_share


def _format(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def matrix_lines(results: Results, target: str | None, suite: str | None = None) -> list[str]:
    """The matrix on one suite: a row per method, a column per attack, the erased class's
    accuracy `0.05 [0.01,0.24] n=20` in each cell (or why it has none), with an attack's budget
    (`@300 steps (quick)`: the preset when below the published strength) and `rising` when its
    curve was still rising at its end; an attack that did not break its positive control here,
    or whose control is not in the run, has its column marked `*` and a line below says which."""
    suite = suite or results.erased_suite()
    chosen = [r for r in results.rows if r.suite == suite and r.step is None]
    methods = list(dict.fromkeys(r.method for r in chosen))
    attacks = list(dict.fromkeys(r.attack for r in chosen))
    cells = {(r.method, r.attack): _cell(r) for r in chosen}
    width = max([len("method"), *(len(m) for m in methods)])
    heads = [a + ("*" if control_note(results.controls.get(a)) else "") for a in attacks]
    columns = [max([len(h), *(len(c) for (_, a), c in cells.items() if a == attack)]) for h, attack in zip(heads, attacks)]
    lines = [f"\nThe matrix: '{target}' accuracy after each attack, suite {suite} (95% Wilson interval, n images)",
             (f"{'method':<{width}} " + " ".join(f"{h:<{c}}" for h, c in zip(heads, columns))).rstrip()]
    for method in methods:
        lines.append(f"{method:<{width}} " + " ".join(f"{cells.get((method, a), '-'):<{c}}"
                                                      for a, c in zip(attacks, columns)).rstrip())
    return lines + control_lines({a: v for a, v in results.controls.items() if a in attacks})


def _cell(row: ResultRow) -> str:
    if row.status != "done":
        return "n/a" if row.status.startswith("not applicable") else row.status.split(":")[0]
    return format_share(row.erased_accuracy, row.n_erased, row.erased_ci, 2) + budget_note(row.budget, row.rising)


def preserved_suite(results: Results) -> str | None:
    """The suite with the most images of the other classes (the preserved accuracy and FID)."""
    totals: dict[str, int] = {}
    for row in results.rows:
        totals[row.suite] = totals.get(row.suite, 0) + row.n_preserved
    return max(totals, key=lambda s: totals[s]) if totals else None


def summary_lines(results: Results, target: str | None) -> list[str]:
    """Per model: the erased class's accuracy on its suite, the other classes' accuracy and FID
    on the suite with most of them, and the revival's sign accuracy."""
    erased, preserved = results.erased_suite(), preserved_suite(results)
    by_cell = {(r.method, r.attack, r.suite): r for r in results.rows if r.step is None}
    models = list(dict.fromkeys((r.method, r.attack) for r in results.rows if r.step is None))
    method_width = max([len("method"), *(len(m) for m, _ in models)])
    attack_width = max([len("attack"), *(len(a) for _, a in models)])
    lines = [f"\n{results.recipe.get('name', '')}: erased concept '{target}' on {erased}; preserved and FID on {preserved}",
             f"{'method':<{method_width}} {'attack':<{attack_width}} {'erased acc [95% CI]':>26} "
             f"{'preserved acc [95% CI]':>26} {'FID':>8} {'sign acc':>8}"]
    for method, attack in models:
        head = f"{method:<{method_width}} {attack:<{attack_width}} "
        first, second = by_cell.get((method, attack, erased)), by_cell.get((method, attack, preserved))
        not_done = next((r.status for r in (first, second) if r is not None and r.status != "done"), None)
        if not_done is not None or first is None or second is None:
            lines.append(head + (not_done or "missing"))
            continue
        shown = format_share(first.erased_accuracy, first.n_erased, first.erased_ci, 3)
        kept = format_share(second.preserved_accuracy, second.n_preserved, second.preserved_ci, 3)
        lines.append(head + f"{shown:>26} {kept:>26} {_format(second.fid, 2):>8} "
                            f"{_format(first.metrics.get('sign_accuracy')):>8}")
    return lines


def print_summary(results: Results, target: str | None) -> None:
    """Print the matrix and the table to standard output."""
    print("\n".join([*matrix_lines(results, target), *summary_lines(results, target)]))
