"""The report stage: the paper's tables, the matrix, plots and image grids of run directories.

Reads only the run directories' files (the recipe, the unlearn and attack records, metrics,
image shards), writes each run's results.json afresh, and writes report.md, one CSV per table,
PNG plots and grids, report.html (all of it in one file: harness.report.html), and the
report's record (what was written, from which runs, with provenance). Several run directories
make one report: the five object runs of Table 1, or runs of a defense sweep. Whatever is not
there is printed as `missing`, never filled in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from harness.atomic import atomic_path
from harness.layout import NO_ATTACK, PRETRAINED, ModelRef, ReportFiles
from harness.outputs import check_output
from harness.provenance import provenance
from harness.records import ReportRecord, write_record
from harness.registry import plugins
from harness.report.cells import MISSING, Table, slug, table_csv, table_markdown
from harness.report.grids import write_grid
from harness.report.heatmap import matrix_heatmap
from harness.report.html import render_html
from harness.report.plots import curve_plot, defense_plot, detectability_surface, sign_accuracy_plot
from harness.report.runs import RunData, load_run

log = logging.getLogger(__name__)

def all_tables(runs: list[RunData]) -> tuple[list[Table], list[str]]:
    """Every table that applies to the runs, and a line per table that does not (why)."""
    tables: list[Table] = []
    absent: list[str] = []
    for plugin in plugins("table"):
        built = plugin(runs)
        found = [t for t in (built if isinstance(built, list) else [built]) if t is not None]
        tables += found
        if not found:
            absent.append(f"{plugin.label}: {plugin.absent}")
    return tables, absent


@dataclass
class ReportJob:
    """The report of one or more run directories, into one folder."""

    run_dirs: list[Path]
    out: Path | None = None
    """The report folder (default: the first run's report folder)."""
    grid_columns: int = 6


def run(job: ReportJob) -> ReportRecord:
    """Write the report of the job's run directories; returns its record."""
    runs = [load_run(p) for p in job.run_dirs]
    grid_columns = job.grid_columns
    files = ReportFiles(Path(job.out)) if job.out is not None else runs[0].layout.report
    check_output(files.folder, "--out", lambda folder: ReportFiles(folder).record.is_file() or ReportFiles(folder).markdown.is_file())
    previous = _previous_files(files)
    tables, absent = all_tables(runs)
    written: list[str] = []
    for table in tables:
        _write_text(files.folder / f"{table.key}.csv", table_csv(table))
        written.append(f"{table.key}.csv")

    plots = [
        ("Sign accuracy against K", "sign_accuracy.png", sign_accuracy_plot,
         "no revival attack with measured sign accuracy"),
        ("Defense curve", "defense_curve.png", defense_plot, "no method with a defense"),
        ("Detectability p(w) (Eq. 7)", "detectability.png", detectability_surface,
         "no unlearn record with sigma_U"),
        ("Recovery curves", "recovery_curves.png", curve_plot, "no training attack with snapshots"),
    ]
    plot_lines = []
    for title, name, make, why in plots:
        log.debug("plot %s", name)
        made = make(runs, files.folder / name)
        plot_lines += [f"### {title}", "", f"![{title}]({name})" if made else f"{MISSING}: {why}", ""]
        if made:
            written.append(name)

    grid_lines = []
    for run in runs:
        for suite in run.suites:
            name = f"matrix-{slug(run.name)}-{slug(suite)}.png"
            log.debug("heat map %s", name)
            if matrix_heatmap(run, suite, files.folder / name):
                plot_lines += [f"### The matrix: {run.name}, {suite}", "", f"![matrix {run.name} {suite}]({name})", ""]
                written.append(name)
            name = f"grid-{slug(run.name)}-{slug(suite)}.png"
            log.debug("grid %s", name)
            made = write_grid(run, suite, files.folder / name, grid_columns)
            grid_lines += [f"### {run.name}: {suite}", "",
                           f"![{run.name} {suite}]({name})" if made else f"{MISSING}: no image shards of {suite}", ""]
            if made:
                written.append(name)
            methods = [m for m in dict.fromkeys(model.method for model in run.models) if m != "pretrained"]
            for method in methods if len(methods) > 1 else []:
                name = f"grid-{slug(run.name)}-{slug(suite)}-{slug(method)}.png"
                if write_grid(run, suite, files.folder / name, grid_columns, method=method):
                    grid_lines += [f"#### {method}: pretrained, unlearned, each attack", "", f"![{method} {suite}]({name})", ""]
                    written.append(name)

    _write_text(files.markdown, render_markdown(runs, tables, absent, plot_lines, grid_lines))
    written.append(files.markdown.name)
    images = [name for name in written if name.endswith(".png")]
    _write_text(files.html, render_html(runs, files.folder, images, tables))
    written.append(files.html.name)
    for stale in previous - set(written):
        (files.folder / stale).unlink(missing_ok=True)
    record = ReportRecord(
        runs=[str(r.path) for r in runs], markdown=str(files.markdown), files=written,
        missing=missing_items(runs) + absent,
        tables={t.key: {"title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes} for t in tables},
        provenance=provenance(),
    )
    write_record(files.record, record)
    return record


def missing_items(runs: list[RunData]) -> list[str]:
    """Files the runs' recipes promise that are not there: stage records and metrics."""
    items = []
    for run in runs:
        root = run.layout.root
        items += [f"{run.name}: {run.layout.unlearn(m).record.relative_to(root)}"
                  for m, record in run.unlearn.items() if record is None]
        items += [f"{run.name}: {run.layout.attack(m.method, m.attack).record.relative_to(root)}"
                  for m, record in run.attacks.items() if record is None]
        items += [f"{run.name}: {row.status.removeprefix('missing: ')}" for row in run.results.rows
                  if row.status.startswith("missing")]
    return items


def render_markdown(runs: list[RunData], tables: list[Table], absent: list[str],
                    plot_lines: list[str], grid_lines: list[str]) -> str:
    record = provenance()
    lines = ["# Benchmark report", "",
             f"Made {record['created']} by harness {record['versions'].get('harness')} from "
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}. "
             f"`{MISSING}` marks a value whose file is not there; nothing is filled in.", "",
             "## Runs", "",
             "| Run | Directory | Concept | Kind | Methods | Attacks | Cells with metrics |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        methods = sorted({m.method for m in run.models} - {PRETRAINED})
        attacks = sorted({m.attack for m in run.models} - {NO_ATTACK})
        done = sum(row.status == "done" for row in run.results.rows)
        lines.append(f"| {run.name} | {run.path} | {run.target or MISSING} | {run.concept_kind or MISSING} | "
                     f"{', '.join(methods) or 'none'} | {', '.join(attacks) or 'none'} | {done} of {len(run.results.rows)} |")
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


def describe_model(run: RunData, model: ModelRef) -> str:
    """One line on what the model is, from the recipe and the stage records."""
    if model.method == PRETRAINED:
        return f"base model {run.recipe.model}" if run.recipe else "base model"
    if model.attack == NO_ATTACK:
        record = run.unlearn.get(model.method)
        if record is None:
            return f"unlearn record {MISSING}"
        text = f"{record.method} on '{run.target}', {record.changed} weights changed"
        text += f" ({100 * record.fraction_of_unet:.3f}% of the UNet)"
        sigma = run.sigma(model.method)
        return text + (f", Gaussian obfuscation sigma_M = {sigma:g}" if sigma else "")
    record = run.attacks.get(model)
    if record is None:
        settings = run.revival_settings(model)
        text = f"attack {model.attack}" + (f" (K {settings['top_k']:g}, {settings['magnitude']})" if settings else "")
        return f"{text}; attack record {MISSING}"
    if not record.applicable:
        return f"attack {record.attack}: not applicable ({record.reason})"
    text = f"attack {record.attack} on {model.method}, {record.seconds:g} s"
    if record.reads:
        text += f"; reads {', '.join(record.reads)}"
    if record.revival is not None:
        summary = record.revival.summary
        settings = record.revival.settings
        text += f"; K {settings['top_k']:g}, magnitude {settings['magnitude']}, strategy {settings['strategy']}, {summary.layers} layers"
        if summary.sign_accuracy is not None:
            text += f", sign accuracy {summary.sign_accuracy:.3f}"
    return text


def _previous_files(files: ReportFiles) -> set[str]:
    if not files.record.is_file():
        return set()
    try:
        listed = json.loads(files.record.read_text()).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        return set()
    return {f for f in listed if isinstance(f, str) and "/" not in f}


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)

