"""How visible Gaussian-obfuscated weights are (paper Eq. 7, Fig. 7), and measurements to check it.

With a share alpha of entries drawn from N(0, sigma_M^2) and the rest from N(0, sigma_U^2), the
probability that a value in [-w, w] was modified is

    p(w) = a*erf(w/(sqrt2*sM)) / (a*erf(w/(sqrt2*sM)) + (1-a)*erf(w/(sqrt2*sU)))

sigma_U is measured from the model's unmodified weights (their root-mean-square: the paper
models them as a zero-centred Gaussian).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from scipy.special import erf

from harness.atomic import atomic_path
from harness.errors import HarnessError


def detectability(w: float | np.ndarray, alpha: float | np.ndarray, sigma_m: float | np.ndarray, sigma_u: float) -> np.ndarray:
    """Eq. 7: P(modified | value in [-w, w]); broadcasts over its array arguments."""
    w, alpha, sigma_m = (np.asarray(v, dtype=np.float64) for v in (w, alpha, sigma_m))
    if np.any(w <= 0) or np.any(sigma_m <= 0) or sigma_u <= 0:
        raise HarnessError("detectability: w, sigma_M and sigma_U must be positive")
    if np.any(alpha <= 0) or np.any(alpha >= 1):
        raise HarnessError("detectability: alpha must lie in (0, 1)")
    modified = alpha * erf(w / (np.sqrt(2) * sigma_m))
    unmodified = (1 - alpha) * erf(w / (np.sqrt(2) * sigma_u))
    return modified / (modified + unmodified)


def unmodified_sigma(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> float:
    """sigma_U: root-mean-square of the entries the masks leave untouched, over all layers."""
    total, count = 0.0, 0
    for name, weight in weights.items():
        kept = weight.detach().float()[~masks[name].to(weight.device, torch.bool)]
        total += float((kept.double() ** 2).sum())
        count += kept.numel()
    if count == 0:
        raise HarnessError("detectability: no unmodified weights to measure sigma_U from")
    return (total / count) ** 0.5


def modified_share(masks: dict[str, torch.Tensor]) -> float:
    """alpha: the share of modified entries over all masked layers."""
    return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def exact_zeros(tensors: Iterable[torch.Tensor]) -> int:
    """How many entries are exactly 0.0: the mask the attack finds without a defense."""
    return sum(int((t == 0).sum()) for t in tensors)


def empirical_detectability(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], w: float) -> float:
    """The measured counterpart of Eq. 7: the share of modified entries among those in [-w, w]."""
    inside = modified = 0
    for name, weight in weights.items():
        near = weight.detach().abs() <= w
        inside += int(near.sum())
        modified += int((near & masks[name].to(weight.device, torch.bool)).sum())
    return modified / inside if inside else float("nan")


def plot_detectability(
    path: str | Path,
    sigma_u: float,
    widths: Iterable[float],
    alphas: np.ndarray | None = None,
    sigmas: np.ndarray | None = None,
    marker: tuple[float, float] | None = None,
) -> Path:
    """Fig. 7: surfaces of p(w) over log10 alpha and log10 sigma_M, one panel per w, as PNG.

    `marker` = (alpha, sigma_M) marks a chosen setting on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = np.logspace(-4, -0.5, 60) if alphas is None else np.asarray(alphas)
    sigmas = np.logspace(-6, -0.5, 60) if sigmas is None else np.asarray(sigmas)
    widths = list(widths)
    grid_a, grid_s = np.meshgrid(alphas, sigmas)
    figure = plt.figure(figsize=(5.2 * len(widths), 4.6))
    for index, w in enumerate(widths, start=1):
        axes = figure.add_subplot(1, len(widths), index, projection="3d")
        p = detectability(w, grid_a, grid_s, sigma_u)
        surface = axes.plot_surface(np.log10(grid_a), np.log10(grid_s), p, cmap="viridis", vmin=0, vmax=1)
        if marker is not None:
            axes.scatter([np.log10(marker[0])], [np.log10(marker[1])], [float(detectability(w, *marker, sigma_u))],
                         color="red", s=30)
        axes.view_init(elev=25, azim=-130)
        axes.set_xlabel("log10 alpha (pruned share)")
        axes.set_ylabel("log10 sigma_M")
        axes.set_zlabel("p(w)")
        axes.set_zlim(0, 1)
        axes.set_title(f"w = {w:.3g} (sigma_U = {sigma_u:.3g})")
    figure.colorbar(surface, ax=figure.axes, shrink=0.6, label="P(modified | |x| <= w)")
    figure.suptitle("Eq. 7: probability that a weight in [-w, w] was obfuscated")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
    return path
