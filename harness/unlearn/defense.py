"""Gaussian obfuscation (paper Sec. 4.4): pruned positions get N(0, sigma_M^2) draws, not zeros.

`sigma` is the standard deviation sigma_M. (The paper's text sweeps the variance sigma_M^2 over
1e-6..1e-1 while its Table 12 labels the same sweep sigma_M; recipes state the standard
deviation.) A draw that rounds to exactly zero in the weight's dtype is drawn again, so that
exact-zero detection finds nothing.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError

MAX_REDRAWS = 100


def obfuscate(
    tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], sigma: float, seed: int
) -> dict[str, torch.Tensor]:
    """Copies of `tensors` with every masked entry replaced by a N(0, sigma^2) draw.

    Draws come from one CPU generator seeded `seed`, layer after layer in the order of
    `tensors`, positions in row-major order, so the result is the same on any device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    result = {}
    for name, tensor in tensors.items():
        mask = masks[name].to(device=tensor.device, dtype=torch.bool)
        values = _nonzero_draws(int(mask.sum()), sigma, tensor.dtype, generator)
        filled = tensor.clone()
        filled[mask] = values.to(tensor.device)
        result[name] = filled
    return result


def _nonzero_draws(count: int, sigma: float, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    values = (torch.randn(count, generator=generator, dtype=torch.float64) * sigma).to(dtype)
    zeros = values == 0
    for _ in range(MAX_REDRAWS):
        if not zeros.any():
            return values
        redraw = (torch.randn(int(zeros.sum()), generator=generator, dtype=torch.float64) * sigma).to(dtype)
        values[zeros] = redraw
        zeros = values == 0
    if zeros.any():
        raise HarnessError(f"sigma {sigma:g} is too small for {dtype}: its draws round to exactly zero", key="")
    return values
