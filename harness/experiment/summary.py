"""The table the main command prints, read from results.json: per model of the matrix, the
erased class's accuracy and the preserved classes' (with n and 95% intervals), FID and the
revival's sign accuracy; a cell without numbers says why."""

from __future__ import annotations

from harness.records import ResultRow, Results
from harness.stats import format_share


def _format(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(results: Results, target: str | None, suite: str | None = None) -> list[str]:
    """The printed table's lines for one suite (default: the first that scores the erased class)."""
    rows = results.rows
    suites = list(dict.fromkeys(r.suite for r in rows))
    suite = suite or next((s for s in suites if any(r.n_erased for r in rows if r.suite == s)), suites[0] if suites else None)
    chosen = [r for r in rows if r.suite == suite and r.step is None]
    method_width = max([len("method"), *(len(r.method) for r in chosen)])
    attack_width = max([len("attack"), *(len(r.attack) for r in chosen)])
    lines = [f"\n{results.recipe.get('name', '')}: erased concept '{target}', suite {suite}",
             f"{'method':<{method_width}} {'attack':<{attack_width}} {'erased acc [95% CI]':>26} "
             f"{'preserved acc [95% CI]':>26} {'FID':>8} {'sign acc':>8}"]
    for row in chosen:
        lines.append(_line(row, method_width, attack_width))
    return lines


def _line(row: ResultRow, method_width: int, attack_width: int) -> str:
    head = f"{row.method:<{method_width}} {row.attack:<{attack_width}} "
    if row.status != "done":
        return head + row.status
    erased = format_share(row.erased_accuracy, row.n_erased, row.erased_ci, 3)
    preserved = format_share(row.preserved_accuracy, row.n_preserved, row.preserved_ci, 3)
    return head + f"{erased:>26} {preserved:>26} {_format(row.fid, 2):>8} {_format(row.metrics.get('sign_accuracy')):>8}"


def print_summary(results: Results, target: str | None) -> None:
    """Print the table to standard output."""
    print("\n".join(summary_lines(results, target)))
