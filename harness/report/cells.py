"""Tables of the report: a titled grid of cells, written as markdown and CSV; a cell with no
source is None, printed `missing`, and one whose value does not apply is the text `n/a`."""

from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import dataclass, field

Cell = str | int | float | None
MISSING = "missing"
NOT_APPLICABLE = "n/a"


@dataclass
class Table:
    """A titled table; `key` names its CSV file."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def slug(name: str) -> str:
    """A file-name-safe form of a run, model or suite name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run"


def average_row(label: str, rows: list[list[Cell]]) -> list[Cell]:
    """Column means; a column with any missing (or non-numeric) cell stays missing."""
    out: list[Cell] = [label]
    for column in zip(*(row[1:] for row in rows)):
        numbers = [v for v in column if isinstance(v, (int, float))]
        out.append(statistics.fmean(numbers) if len(numbers) == len(column) else None)
    return out


def format_cell(value: Cell) -> str:
    """Markdown text of a cell: `missing` for None, two decimals (or scientific when tiny)."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.2f}"


def table_markdown(table: Table) -> str:
    lines = [f"| {' | '.join(table.columns)} |", f"|{'|'.join('---' for _ in table.columns)}|"]
    lines += [f"| {' | '.join(format_cell(c) for c in row)} |" for row in table.rows]
    return "\n".join(lines)


def table_csv(table: Table) -> str:
    """CSV text of a table with full-precision numbers and `missing` for absent cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([MISSING if c is None else c for c in row] for row in table.rows)
    return buffer.getvalue()
