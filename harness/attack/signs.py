"""Top-K sign retention: keep the signs of the most confident completed values of a layer."""

from __future__ import annotations

import torch


def top_k_keep(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask over `values` (the completed entries at pruned positions of one layer, flat):
    True for the round(fraction * n) largest magnitudes, global over the layer, ties by position."""
    count = int(round(fraction * values.numel()))
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if count:
        order = torch.argsort(values.abs().flatten(), descending=True, stable=True)
        keep[order[:count]] = True
    return keep.view_as(values)


def sign_agreement(estimate: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Share of entries whose sign matches the truth (entries whose true value is 0 are left out)."""
    counted = truth != 0
    total = int(counted.sum())
    if total == 0:
        return None
    return float((torch.sign(estimate[counted]) == torch.sign(truth[counted])).sum()) / total
