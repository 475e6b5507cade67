"""The baseline and the ideal-case ablations the attack is compared with.

- quant4 (Quant Recover, Zhang et al. 2024): symmetric 4-bit per-row quantisation of the
  unlearned weights, scale = row amax / 7, round half up, clamp to [-8, 7], dequantised.
  fidelity "paper" computes in the weight's dtype (fp32 in the harness); "reference-code" in
  fp16 like the authors' quant_model (every operation rounded to fp16: amax / 7, w / scale,
  + 0.5, the product), which moves 3-4% of SD entries and puts 0.04-0.07% on another level.
  All-zero rows stay zero under both (the authors' code would give 0/0 = NaN there).
- ideal cases (paper Sec. 3, PROTOCOL.md 2.6), which need the original weights: true signs with
  NMS or sampled magnitudes, and true magnitudes with random signs; the magnitude rules follow
  `fidelity` (see harness.attack.revival.magnitudes).
"""

from __future__ import annotations

import torch

from harness.attack.revival.magnitudes import magnitudes
from harness.attack.revival.signs import check_fidelity


def quant4(weight: torch.Tensor, fidelity: str = "paper") -> torch.Tensor:
    """Quantise each output row to 4 bits and back; zeros stay zero, all-zero rows unchanged."""
    work = weight.to(torch.float16) if check_fidelity(fidelity) == "reference-code" else weight
    amax = work.abs().max(dim=1, keepdim=True).values
    scale = torch.where(amax > 0, amax / 7, torch.ones_like(amax))
    levels = torch.floor(work / scale + 0.5).clamp(-8, 7)
    return (levels * scale).to(weight.dtype)


def ideal_case(
    strategy: str,
    weight: torch.Tensor,
    pruned: torch.Tensor,
    original: torch.Tensor,
    generator: torch.Generator,
    fidelity: str = "paper",
) -> torch.Tensor:
    """The weight with its pruned entries rebuilt from partly known truth."""
    if strategy == "ideal-sign-nms":
        values = torch.sign(original) * magnitudes("nms", weight, pruned, original, generator, fidelity)
    elif strategy == "ideal-sign-sample":
        values = torch.sign(original) * magnitudes("sample", weight, pruned, original, generator, fidelity)
    elif strategy == "ideal-magnitude-random-sign":
        coin = torch.randint(0, 2, weight.shape, generator=generator, device="cpu").to(weight.device)
        values = original.abs() * (coin * 2 - 1).to(weight.dtype)
    else:
        raise ValueError(f"unknown ideal-case strategy {strategy!r}")
    return torch.where(pruned, values, weight)
