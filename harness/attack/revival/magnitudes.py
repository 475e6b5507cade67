"""Magnitudes for revived weights, per neuron (output row), from the row's surviving weights.

fidelity "paper" (the default, the paper's definitions):
- nms (Neuron-Max Scaling, the paper's method): the row's largest |w|.
- average: the row's mean |w|.
- sample: |N(mu, sigma)| with mu, sigma the mean and (n - 1) std of the row's surviving |w|.
- align: the completed value's own magnitude.

fidelity "reference-code" (the authors' neuron_max_scaling.py), with mu, sigma the mean and
population std of the row's *signed* surviving weights (sigma 0 -> 1e-8, as theirs):
- sample: |N(mu, sigma)|;
- nms: max(|N(mu, sigma)|, row max + max(1e-12, 1e-6 * row max)), i.e. 1.000001 * row max
  unless the draw is larger (about 0.1% of entries on SD-like rows);
- average and align: as in the paper.
Rows with no surviving weight get magnitude 0 under both.
"""

from __future__ import annotations

import torch

from harness.attack.revival.signs import check_fidelity

REFERENCE_NMS_RELATIVE_MARGIN = 1e-6
REFERENCE_NMS_ABSOLUTE_MARGIN = 1e-12
REFERENCE_SIGMA_FLOOR = 1e-8


def row_statistics(weight: torch.Tensor, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row max, mean and std of |w| over surviving (unpruned) entries; 0 for empty rows."""
    survivors = (~pruned).to(weight.dtype)
    magnitude = weight.abs() * survivors
    count = survivors.sum(dim=1)
    safe = count.clamp(min=1)
    mean = magnitude.sum(dim=1) / safe
    variance = ((magnitude - mean[:, None]) ** 2 * survivors).sum(dim=1) / (safe - 1).clamp(min=1)
    return magnitude.max(dim=1).values, mean, variance.sqrt()


def signed_row_statistics(weight: torch.Tensor, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and population std of the signed surviving weights (the authors' code);
    a zero std becomes 1e-8 as in their code; 0 and 1e-8 for empty rows."""
    survivors = (~pruned).to(weight.dtype)
    values = weight * survivors
    safe = survivors.sum(dim=1).clamp(min=1)
    mean = values.sum(dim=1) / safe
    variance = ((values - mean[:, None]) ** 2 * survivors).sum(dim=1) / safe
    std = variance.sqrt()
    return mean, torch.where(std > 0, std, torch.full_like(std, REFERENCE_SIGMA_FLOOR))


def _normal(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device="cpu").to(weight.device)


def magnitudes(
    rule: str,
    weight: torch.Tensor,
    pruned: torch.Tensor,
    completed: torch.Tensor,
    generator: torch.Generator,
    fidelity: str = "paper",
) -> torch.Tensor:
    """A magnitude for every entry of the layer (only pruned positions are used by callers).
    Sampling rules draw one standard normal per entry of the layer from `generator` (CPU)."""
    reference = check_fidelity(fidelity) == "reference-code"
    maximum, mean, std = row_statistics(weight, pruned)
    empty = (~pruned).sum(dim=1) == 0
    if rule == "average":
        return mean[:, None].expand_as(weight)
    if rule == "align":
        return completed.abs()
    if rule == "nms" and not reference:
        return maximum[:, None].expand_as(weight)
    if rule == "sample" and not reference:
        return (mean[:, None] + std[:, None] * _normal(weight, generator)).abs()
    if rule not in ("nms", "sample"):
        raise ValueError(f"unknown magnitude rule {rule!r}")
    signed_mean, signed_std = signed_row_statistics(weight, pruned)
    drawn = (signed_mean[:, None] + signed_std[:, None] * _normal(weight, generator)).abs()
    if rule == "nms":
        top = maximum.double()  # their threshold is a Python float: row max + margin, rounded once
        floor = (top + torch.clamp(top * REFERENCE_NMS_RELATIVE_MARGIN, min=REFERENCE_NMS_ABSOLUTE_MARGIN)).to(weight.dtype)
        drawn = torch.maximum(drawn, floor[:, None])
    return torch.where(empty[:, None], torch.zeros((), dtype=weight.dtype, device=weight.device), drawn)
