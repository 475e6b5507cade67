"""The matrix as a heat map: methods (rows) x attacks (columns), each cell coloured by the erased
concept's accuracy after the attack and labelled with it, its 95% interval and n; a cell with
no numbers is grey and says why (not applicable, missing); a cell not in the matrix (the
pretrained row's attacks, the attacks a row leaves out) is blank."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from harness.layout import ModelRef
from harness.report.plots import plt, save_figure
from harness.report.runs import RunData

CELL_WIDTH, CELL_HEIGHT = 1.6, 0.75
"""Inches per cell."""


def matrix_heatmap(run: RunData, suite: str, path: Path) -> Path | None:
    """The heat map of `run`'s matrix on `suite`; None when no row of it measures the erased class."""
    if not any(r.n_erased for r in run.results.rows if r.suite == suite):
        return None
    methods = list(dict.fromkeys(m.method for m in run.models))
    attacks = list(dict.fromkeys(m.attack for m in run.models))
    values = np.full((len(methods), len(attacks)), np.nan)
    labels = [[""] * len(attacks) for _ in methods]
    for i, method in enumerate(methods):
        for j, attack in enumerate(attacks):
            row = run.row(ModelRef(method, attack), suite)
            if row is None:  # not in the matrix: the pretrained row's attacks, a row's left-out attacks
                continue
            if row.status != "done" or row.erased_accuracy is None:
                labels[i][j] = "\n".join(textwrap.wrap(row.status, 18)[:3])
            else:
                values[i, j] = row.erased_accuracy
                low, high = row.erased_ci or (float("nan"), float("nan"))
                labels[i][j] = f"{row.erased_accuracy:.2f}\n[{low:.2f}, {high:.2f}]\nn={row.n_erased}"
    figure, axes = plt.subplots(figsize=(2.2 + CELL_WIDTH * len(attacks), 1.4 + CELL_HEIGHT * len(methods)))
    colours = plt.get_cmap("RdYlGn_r").with_extremes(bad="0.88")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(attacks)):
            axes.text(j, i, labels[i][j], ha="center", va="center", fontsize=7)
    axes.set_xticks(range(len(attacks)), attacks, rotation=20, ha="right", fontsize=8)
    axes.set_yticks(range(len(methods)), methods, fontsize=8)
    axes.set_title(f"{run.name}: '{run.target}' accuracy after each attack ({suite})", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.04, label="erased accuracy (red: back)")
    figure.tight_layout()
    return save_figure(figure, path)
