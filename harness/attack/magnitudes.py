"""Magnitudes for revived weights, per neuron (output row), from the row's surviving weights.

- nms (Neuron-Max Scaling, the paper's method): the row's largest |w|.
- average: the row's mean |w|.
- sample: |N(mu, sigma)| with mu, sigma the mean and std of the row's surviving |w|.
- align: the completed value's own magnitude.
"""

from __future__ import annotations

import torch

def row_statistics(weight: torch.Tensor, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row max, mean and std of |w| over surviving (unpruned) entries; 0 for empty rows."""
    survivors = (~pruned).to(weight.dtype)
    magnitude = weight.abs() * survivors
    count = survivors.sum(dim=1)
    safe = count.clamp(min=1)
    mean = magnitude.sum(dim=1) / safe
    variance = ((magnitude - mean[:, None]) ** 2 * survivors).sum(dim=1) / (safe - 1).clamp(min=1)
    return magnitude.max(dim=1).values, mean, variance.sqrt()


def magnitudes(
    rule: str,
    weight: torch.Tensor,
    pruned: torch.Tensor,
    completed: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """A magnitude for every entry of the layer (only pruned positions are used by callers)."""
    maximum, mean, std = row_statistics(weight, pruned)
    if rule == "nms":
        return maximum[:, None].expand_as(weight)
    if rule == "average":
        return mean[:, None].expand_as(weight)
    if rule == "sample":
        noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device="cpu").to(weight.device)
        return (mean[:, None] + std[:, None] * noise).abs()
    if rule == "align":
        return completed.abs()
    raise ValueError(f"unknown magnitude rule {rule!r}")
