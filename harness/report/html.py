"""report.html: the report as one self-contained file a browser opens (no other file needed).

For every run and suite, the matrix as a coloured table (the heat map's colours: green erased,
red back), each cell with its share, 95% interval, n and budget, linking to the image grid of
its method and, for attacks with snapshots, to the recovery curves; below it every plot and grid
the report wrote, embedded as PNG data, and every table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from harness.layout import ModelRef
from harness.report.cells import Table, format_cell, slug
from harness.report.plots import plt
from harness.report.runs import RunData
from harness.report.table_matrix import cell_text

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.5em; font-size: 0.85em; vertical-align: middle; }
td.cell { text-align: center; min-width: 9em; }
td.cell a { color: inherit; text-decoration: none; display: block; }
td.empty { background: #e0e0e0; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.85em; }
"""


def colour(value: float) -> tuple[str, str]:
    """(background, text colour) of an erased share in [0, 1], on the heat map's RdYlGn_r scale."""
    red, green, blue, _ = plt.get_cmap("RdYlGn_r")(max(0.0, min(1.0, value)))
    light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
    return f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}", "#000" if light else "#fff"


def grid_anchor(run: str, suite: str, method: str | None = None) -> str:
    return "grid-" + "-".join(slug(p) for p in (run, suite, *([method] if method else [])))


def matrix_html(run: RunData, suite: str, anchors: set[str]) -> list[str]:
    """The matrix of one run and suite as an HTML table; a cell links to its method's grid (or
    the run's) and, with snapshots, to the recovery curves."""
    methods = list(dict.fromkeys(m.method for m in run.models))
    attacks = list(dict.fromkeys(m.attack for m in run.models))
    curved = {m.attack for m in run.models if m.step is not None}
    lines = [f"<table class='matrix'><tr><th>method</th>{''.join(f'<th>{html.escape(a)}</th>' for a in attacks)}</tr>"]
    for method in methods:
        cells = []
        for attack in attacks:
            row = run.row(ModelRef(method, attack), suite)
            text = html.escape(str(cell_text(row))) if row is not None else ""
            target = next((a for a in (grid_anchor(run.name, suite, method), grid_anchor(run.name, suite)) if a in anchors),
                          None)
            links = (f"<a href='#{target}' title='images'>{text}</a>" if target and text else text)
            if attack in curved and row is not None and row.status == "done" and "curves" in anchors:
                links += " <a href='#curves' title='recovery curve'>(curve)</a>"
            if row is not None and row.status == "done" and row.erased_accuracy is not None:
                background, ink = colour(row.erased_accuracy)
                cells.append(f"<td class='cell' style='background:{background};color:{ink}'>{links}</td>")
            else:
                cells.append(f"<td class='cell empty'>{links}</td>")
        lines.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    lines.append("</table>")
    return lines


def table_html(table: Table) -> list[str]:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = ["<tr>" + "".join(f"<td>{html.escape(format_cell(c))}</td>" for c in row) + "</tr>" for row in table.rows]
    notes = [f"<p class='note'>{html.escape(n)}</p>" for n in table.notes]
    return [f"<h3>{html.escape(table.title)}</h3>", f"<table><tr>{head}</tr>", *body, "</table>", *notes]


def image_html(path: Path, anchor: str, title: str) -> list[str]:
    data = base64.b64encode(path.read_bytes()).decode()
    return [f"<h3 id='{anchor}'>{html.escape(title)}</h3>", f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"]


def render_html(runs: list[RunData], folder: Path, images: list[str], tables: list[Table]) -> str:
    """report.html's text from the runs and the PNGs (`images`, names in `folder`) the report wrote."""
    sections: list[tuple[str, str, Path]] = []  # (anchor, title, file)
    for name in images:
        file = folder / name
        if name == "recovery_curves.png":
            sections.append(("curves", "Recovery curves", file))
        elif name.startswith("grid-"):
            sections.append((name.removesuffix(".png"), f"Images: {name.removeprefix('grid-').removesuffix('.png')}", file))
        elif not name.startswith("matrix-"):
            sections.append((slug(name.removesuffix(".png")), name.removesuffix(".png").replace("_", " "), file))
    anchors = {anchor for anchor, _, _ in sections}
    body = ["<h1>Benchmark report</h1>",
            "<p class='note'>Each matrix cell: the erased concept's accuracy after the attack [95% Wilson interval], "
            "n images and the attack's budget; green: erased, red: back, grey: no number (the cell says why). "
            "Click a cell for its images; (curve) opens the recovery curves.</p>"]
    for run in runs:
        for suite in run.suites:
            if any(r.n_erased for r in run.results.rows if r.suite == suite):
                body += [f"<h2>{html.escape(run.name)}: '{html.escape(str(run.target))}' on {html.escape(suite)}</h2>",
                         *matrix_html(run, suite, anchors)]
    body.append("<h2>Plots and images</h2>")
    for anchor, title, file in sections:
        body += image_html(file, anchor, title)
    body.append("<h2>Tables</h2>")
    for table in tables:
        body += table_html(table)
    page = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>Benchmark report</title>",
            f"<style>{STYLE}</style></head><body>", *body, "</body></html>"]
    return "\n".join(page) + "\n"
