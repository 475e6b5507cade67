"""The report's plots as PNG: sign accuracy against K, the defense curve, the p(w) surface.

Each returns the path it wrote, or None when the runs hold no data for it. Figures have a fixed
size (PLOT_SIZE at DPI), so the same data give the same picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from harness.atomic import atomic_path  # noqa: E402
from harness.report.runs import RunData  # noqa: E402
from harness.report.table_ablation import methods_of  # noqa: E402
from harness.report.table_defense import defense_points  # noqa: E402
from harness.report.table_signs import sign_rows  # noqa: E402

PLOT_SIZE = (6.4, 4.2)
DPI = 100
PAPER_TABLE6 = ((0.2, 0.96, 0.67), (0.3, 0.94, 0.64), (0.5, 0.88, 0.58), (0.7, 0.81, 0.54), (0.9, 0.75, 0.51))
"""The paper's Table 6 (SD-v1.5): K, top-K sign accuracy, rest sign accuracy."""
SURFACE_WIDTHS = (0.01, 0.1, 0.5)
"""Interval half-widths w of the p(w) panels, as fractions of sigma_U."""


def save_figure(figure: Figure, path: Path) -> Path:
    """Write `figure` as PNG through a temporary name, then close it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    plt.close(figure)
    return path


def sign_accuracy_plot(runs: list[RunData], path: Path) -> Path | None:
    """Top-K and rest sign accuracy against K for every method with measured signs, beside the paper's."""
    series = [(f"{run.name}/{method}", [(k, values) for k, _, values in sign_rows(run, method) if values.top_k is not None])
              for run in runs for method in methods_of(run)]
    series = [(name, points) for name, points in series if points]
    if not series:
        return None
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    for index, (name, points) in enumerate(series):
        color = f"C{index}"
        ks = [k for k, _ in points]
        axes.plot(ks, [v.top_k for _, v in points], "o-", color=color, label=f"{name}: top-K")
        rest = [(k, v.rest) for k, v in points if v.rest is not None]
        if rest:
            axes.plot(*zip(*rest), "s--", color=color, alpha=0.7, label=f"{name}: rest")
    axes.plot([p[0] for p in PAPER_TABLE6], [p[1] for p in PAPER_TABLE6], "x:", color="grey", label="paper: top-K")
    axes.plot([p[0] for p in PAPER_TABLE6], [p[2] for p in PAPER_TABLE6], "+:", color="silver", label="paper: rest")
    axes.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
    axes.set_xlabel("K (share of completed values kept, by magnitude)")
    axes.set_ylabel("sign accuracy")
    axes.set_xlim(0, 1.05)
    axes.set_ylim(0.3, 1.02)
    axes.set_title("Sign accuracy of the top-K recovered weights")
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return save_figure(figure, path)


def defense_plot(runs: list[RunData], path: Path) -> Path | None:
    """Erased/preserved accuracy of the unlearned model and erased accuracy after the attack
    against sigma_M (log axis); undefended runs are horizontal reference lines."""
    groups = defense_points(runs)
    if not groups:
        return None
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    for index, (target, points) in enumerate(groups.items()):
        color = f"C{index}"
        defended = [p for p in points if p.sigma is not None]
        sigmas = [p.sigma for p in defended]
        curves = (("unlearned erased", lambda p: p.unlearned[0], "o-"),
                  ("unlearned preserved", lambda p: p.unlearned[1], "s--"),
                  ("attacked erased", lambda p: p.attacked[0], "^:"))
        for label, value, style in curves:
            pairs = [(s, value(p)) for s, p in zip(sigmas, defended) if value(p) is not None]
            if pairs:
                axes.plot(*zip(*pairs), style, color=color, label=f"{target}: {label}")
        for p in points:
            if p.sigma is None and p.unlearned[0] is not None:
                axes.axhline(p.unlearned[0], color=color, linewidth=0.8, alpha=0.5,
                             label=f"{target}: erased, no defense")
    axes.set_xscale("log")
    return save_accuracy_plot(figure, axes, "sigma_M (std of the Gaussian replacing pruned weights)",
                              "Defense: Gaussian obfuscation against unlearning and attack", path)


def curve_plot(runs: list[RunData], path: Path) -> Path | None:
    """Erased (solid) and preserved (dashed) accuracy against training steps for every training
    attack's curve, with the erased accuracy's 95% intervals as error bars."""
    from harness.report.table_curves import curves

    found = curves(runs)
    if not found:
        return None
    figure, axes = plt.subplots(figsize=PLOT_SIZE)
    for index, curve in enumerate(found):
        color = f"C{index}"
        points = [p for p in curve.points if p.erased is not None]
        label = f"{curve.method}/{curve.attack}" + (f" ({curve.run.name})" if len(runs) > 1 else "")
        errors = [[p.erased - p.erased_ci[0] for p in points], [p.erased_ci[1] - p.erased for p in points]]
        axes.errorbar([p.step for p in points], [p.erased for p in points], yerr=errors, fmt="o-", color=color,
                      capsize=2, label=f"{label}: erased")
        kept = [(p.step, p.preserved) for p in curve.points if p.preserved is not None]
        if kept:
            axes.plot(*zip(*kept), "s--", color=color, alpha=0.6, label=f"{label}: preserved")
        if curve.pretrained is not None:
            axes.axhline(curve.pretrained / 2, color=color, linewidth=0.6, linestyle=":")
    return save_accuracy_plot(figure, axes, "training steps of the attack (0: the unlearned model)",
                              "Recovery curves (dotted: half of pretrained)", path)


def save_accuracy_plot(figure: Figure, axes: Any, xlabel: str, title: str, path: Path) -> Path:
    """Label an accuracy-against-x plot (y in [0, 1]), add its legend and save it as PNG."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel("top-1 accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return save_figure(figure, path)


def surface_inputs(runs: list[RunData]) -> tuple[float, float | None, float | None] | None:
    """(sigma_U, alpha, sigma_M) for the p(w) surface from the unlearn records: a defended
    method's detectability record first, else any method's recorded sigma_U and share."""
    records = [r for run in runs for r in run.unlearn.values() if r is not None]
    for record in records:
        if record.detectability and record.detectability.get("sigma_u"):
            d = record.detectability
            return float(d["sigma_u"]), d.get("alpha"), d.get("sigma_m")
    for record in records:
        if record.sigma_u:
            return record.sigma_u, record.fraction_of_layers, None
    return None


def detectability_surface(runs: list[RunData], path: Path) -> Path | None:
    """Fig. 7: p(w) over (alpha, sigma_M) at three interval widths w relative to sigma_U."""
    from harness.unlearn.detectability import plot_detectability

    inputs = surface_inputs(runs)
    if inputs is None:
        return None
    sigma_u, alpha, sigma_m = inputs
    marker = (alpha, sigma_m) if alpha and sigma_m and 0 < alpha < 1 else None
    return plot_detectability(path, sigma_u, [sigma_u * f for f in SURFACE_WIDTHS], marker=marker)
