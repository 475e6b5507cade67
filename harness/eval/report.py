"""`harness report RUN_DIR [RUN_DIR ...]`: the paper's tables, plots and image grids.

Reads only the run directories' files (recipe.yaml, unlearn.json, revive reports, metrics JSON,
image shards) and writes report.md, one CSV per table, PNG plots and grids, and report.json
(what was written, from which runs, with provenance). Several run directories make one report:
the five object runs of Table 1, or a defense sweep over sigma_M. Whatever is not there is
printed as `missing`, never filled in.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

from harness.atomic import atomic_path
from harness.errors import HarnessError
from harness.eval.report_grids import write_grid
from harness.eval.report_plots import defense_plot, detectability_surface, sign_accuracy_plot
from harness.eval.report_runs import RunData, load_run
from harness.eval.report_tables import Cell, Table, all_tables, slug
from harness.experiment.plan import PRETRAINED, REVIVED_PREFIX, UNLEARNED
from harness.provenance import provenance, write_json_atomic

log = logging.getLogger(__name__)

MISSING = "missing"
RECORD = "report.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories to report on")
    parser.add_argument("--out", type=Path, help="output folder (default: FIRST_RUN_DIR/report)")
    parser.add_argument("--grid-columns", type=int, default=6, help="prompts per image grid (default 6)")


def run(args: argparse.Namespace) -> int:
    if args.grid_columns < 1:
        raise HarnessError(f"--grid-columns must be at least 1, got {args.grid_columns}")
    path = write_report(args.run_dirs, args.out, args.grid_columns)
    print(path)
    return 0


def write_report(run_dirs: list[Path], out: Path | None = None, grid_columns: int = 6) -> Path:
    """Write the report of `run_dirs` into `out` (default: the first run's report/); returns
    the path of report.md."""
    runs = [load_run(p) for p in run_dirs]
    out = Path(out) if out is not None else runs[0].path / "report"
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(out)
    tables, absent = all_tables(runs)
    written: list[str] = []
    for table in tables:
        _write_text(out / f"{table.key}.csv", table_csv(table))
        written.append(f"{table.key}.csv")

    plots = [
        ("Sign accuracy against K", "sign_accuracy.png", sign_accuracy_plot,
         "no attack variant with measured sign accuracy (needs attack.original)"),
        ("Defense curve", "defense_curve.png", defense_plot, "no run with unlearn.defense"),
        ("Detectability p(w) (Eq. 7)", "detectability.png", detectability_surface,
         "no unlearn.json detectability record and no unlearned tensors with a mask"),
    ]
    plot_lines = []
    for title, name, make, why in plots:
        log.info("plot %s", name)
        made = make(runs, out / name)
        plot_lines += [f"### {title}", "", f"![{title}]({name})" if made else f"{MISSING}: {why}", ""]
        if made:
            written.append(name)

    grid_lines = []
    for run in runs:
        for suite in run.suites:
            name = f"grid-{slug(run.name)}-{slug(suite)}.png"
            log.info("grid %s", name)
            made = write_grid(run, suite, out / name, grid_columns)
            grid_lines += [f"### {run.name}: {suite}", "",
                           f"![{run.name} {suite}]({name})" if made else f"{MISSING}: no image shards of {suite}", ""]
            if made:
                written.append(name)

    markdown = render_markdown(runs, tables, absent, plot_lines, grid_lines)
    _write_text(out / "report.md", markdown)
    written.append("report.md")
    for stale in previous - set(written):
        (out / stale).unlink(missing_ok=True)
    write_json_atomic(out / RECORD, {
        "runs": [str(r.path) for r in runs],
        "files": written,
        "missing": missing_items(runs) + absent,
        "tables": {t.key: {"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes} for t in tables},
        "provenance": provenance(),
    })
    return out / "report.md"


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


def missing_items(runs: list[RunData]) -> list[str]:
    """Files the runs' recipes promise that are not there."""
    items = []
    for run in runs:
        if run.recipe is not None and run.recipe.unlearn is not None and run.unlearn is None:
            items.append(f"{run.name}: unlearn/unlearn.json")
        items += [f"{run.name}: revive/{v}/report.json" for v, report in run.revive.items() if report is None]
        items += [f"{run.name}: metrics/{m}/{s}.json" for m in run.models for s in run.suites
                  if (m, s) not in run.metrics]
    return items


def render_markdown(runs: list[RunData], tables: list[Table], absent: list[str],
                    plot_lines: list[str], grid_lines: list[str]) -> str:
    record = provenance()
    lines = ["# Benchmark report", "",
             f"Made {record['created']} by harness {record['versions'].get('harness')} from "
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}. "
             f"`{MISSING}` marks a value whose file is not there; nothing is filled in.", "",
             "## Runs", "",
             "| Run | Directory | Concept | Kind | Method | Defense sigma_M | Metrics files |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        method = (run.unlearn or {}).get("method") or (run.recipe.unlearn.method if run.recipe and run.recipe.unlearn else None)
        lines.append(f"| {run.name} | {run.path} | {run.target or MISSING} | {run.concept_kind or MISSING} | "
                     f"{method or 'given unlearned model'} | {format_cell(run.sigma) if run.sigma else 'none'} | "
                     f"{len(run.metrics)} of {len(run.models) * len(run.suites)} |")
    lines += ["", "## Models", ""]
    for run in runs:
        lines += [f"- {run.name} / `{m}`: {describe_model(run, m)}" for m in run.models]
    for table in tables:
        lines += ["", f"## {table.title}", "", table_markdown(table), ""]
        lines += [f"- {note}" for note in table.notes]
        lines += [f"- CSV: [{table.key}.csv]({table.key}.csv)"]
    if absent:
        lines += ["", "## Tables that do not apply to these runs", ""] + [f"- {line}" for line in absent]
    lines += ["", "## Plots", "", *plot_lines, "## Image grids", "",
              "Same prompt ids and seeds in every row.", "", *grid_lines]
    missing = missing_items(runs)
    lines += ["## Missing files", ""] + ([f"- {item}" for item in missing] or ["none"])
    return "\n".join(lines).rstrip("\n") + "\n"


def describe_model(run: RunData, model: str) -> str:
    """One line on what the model is, from the recipe and the stage records."""
    if model == PRETRAINED:
        return f"base model {run.recipe.model}" if run.recipe else "base model"
    if model == UNLEARNED:
        record = run.unlearn
        if record is None:
            given = run.recipe.attack.unlearned if run.recipe and run.recipe.unlearn is None else None
            return f"given unlearned model {given}" if given else f"unlearn.json {MISSING}"
        text = f"{record.get('method')} on '{run.target}', {record.get('pruned')} weights changed"
        if record.get("fraction_of_unet") is not None:
            text += f" ({100 * record['fraction_of_unet']:.3f}% of the UNet)"
        return text + (f", Gaussian obfuscation sigma_M = {run.sigma:g}" if run.sigma else "")
    if model.startswith(REVIVED_PREFIX):
        variant = model[len(REVIVED_PREFIX):]
        settings = run.settings.get(variant)
        text = (f"strategy {settings.strategy}, magnitude {settings.magnitude}, top-K {settings.top_k:g}"
                if settings else "settings unknown")
        report = run.revive.get(variant)
        if report is None:
            return f"{text}; revive/{variant}/report.json {MISSING}"
        summary = report.get("summary") or {}
        text += f"; {summary.get('layers', len(report.get('layers', [])))} layers in {report.get('seconds', MISSING)} s"
        if summary.get("sign_accuracy") is not None:
            text += f", sign accuracy {summary['sign_accuracy']:.3f}"
        return text
    return "a model found in metrics/ that the recipe does not name"


def _previous_files(out: Path) -> set[str]:
    record = out / RECORD
    if not record.is_file():
        return set()
    try:
        files = json.loads(record.read_text()).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and "/" not in f}


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
