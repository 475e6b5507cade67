"""Top-K sign retention: keep the signs of the most confident completed values of a layer.

Fidelity (PROTOCOL.md 2.3): "paper" keeps round(K * n) entries, the K fraction of largest
magnitudes, ties by position. "reference-code" behaves like the authors' top_k_sign_retention.py:
d = int((1 - K) * n) entries are dropped by taking the d-th smallest magnitude as a threshold and
zeroing every entry at or below it, so n - d are kept (fewer where magnitudes tie at the
threshold), and nothing is dropped when d is 0; the float arithmetic of (1 - K) * n is theirs,
e.g. K = 0.9, n = 10 keeps all 10 (1 - 0.9 = 0.0999...).
"""

from __future__ import annotations

import torch

FIDELITIES = ("paper", "reference-code")


def check_fidelity(fidelity: str) -> str:
    """The fidelity, or a ValueError naming the choices."""
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
    return fidelity


def top_k_count(count: int, fraction: float, fidelity: str = "paper") -> int:
    """How many of `count` entries Top-K keeps (reference-code: before ties at the threshold)."""
    if check_fidelity(fidelity) == "paper":
        return int(round(fraction * count))
    return count - int((1 - fraction) * count)


def top_k_keep(values: torch.Tensor, fraction: float, fidelity: str = "paper") -> torch.Tensor:
    """Boolean mask over `values` (the completed entries at pruned positions of one layer, flat):
    True for the entries Top-K keeps, global over the layer (see the module docstring)."""
    flat = values.abs().flatten()
    keep = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if check_fidelity(fidelity) == "paper":
        count = top_k_count(values.numel(), fraction, fidelity)
        if count:
            order = torch.argsort(flat, descending=True, stable=True)
            keep[order[:count]] = True
        return keep.view_as(values)
    dropped = int((1 - fraction) * values.numel())
    if dropped <= 0:
        return ~keep.view_as(values)
    threshold = torch.topk(flat, dropped, largest=False).values.max()
    return (flat > threshold).view_as(values)


def sign_agreement(estimate: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Share of entries whose sign matches the truth (entries whose true value is 0 are left out)."""
    counted = truth != 0
    total = int(counted.sum())
    if total == 0:
        return None
    return float((torch.sign(estimate[counted]) == torch.sign(truth[counted])).sum()) / total
