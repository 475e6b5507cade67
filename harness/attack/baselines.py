"""The baseline and the ideal-case ablations the attack is compared with.

- quant4 (Quant Recover, Zhang et al. 2024): symmetric 4-bit per-row quantisation of the
  unlearned weights, scale = row amax / 7, round half up, clamp to [-8, 7], dequantised.
- ideal cases (paper Sec. 3, PROTOCOL.md 2.6), which need the original weights: true signs with
  NMS or sampled magnitudes, and true magnitudes with random signs.
"""

from __future__ import annotations

import torch

from harness.attack.magnitudes import magnitudes


def quant4(weight: torch.Tensor) -> torch.Tensor:
    """Quantise each output row to 4 bits and back; zeros stay zero, all-zero rows unchanged."""
    amax = weight.abs().max(dim=1, keepdim=True).values
    scale = torch.where(amax > 0, amax / 7, torch.ones_like(amax))
    levels = torch.floor(weight / scale + 0.5).clamp(-8, 7)
    return levels * scale


def ideal_case(
    strategy: str,
    weight: torch.Tensor,
    pruned: torch.Tensor,
    original: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The weight with its pruned entries rebuilt from partly known truth."""
    if strategy == "ideal-sign-nms":
        values = torch.sign(original) * magnitudes("nms", weight, pruned, original, generator)
    elif strategy == "ideal-sign-sample":
        values = torch.sign(original) * magnitudes("sample", weight, pruned, original, generator)
    elif strategy == "ideal-magnitude-random-sign":
        coin = torch.randint(0, 2, weight.shape, generator=generator, device="cpu").to(weight.device)
        values = original.abs() * (coin * 2 - 1).to(weight.dtype)
    else:
        raise ValueError(f"unknown ideal-case strategy {strategy!r}")
    return torch.where(pruned, values, weight)
