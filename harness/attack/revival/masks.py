"""Finding the pruned positions of a weight matrix: exact zeros, a mask file, near-zero entries,
or a detector of Gaussian-obfuscated weights (`harness.attack.revival.detect`)."""

from __future__ import annotations

import torch

from harness.attack.revival.detect import detected_mask
from harness.attack.revival.settings import MaskSettings
from harness.errors import HarnessError


def check_finite(weight: torch.Tensor, layer: str) -> None:
    """Non-finite weights make completion meaningless: refuse them up front."""
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise HarnessError(f"layer '{layer}' of the unlearned model: {bad} non-finite weight(s)")


def pruned_positions(
    weight: torch.Tensor,
    settings: MaskSettings,
    layer: str,
    mask_from_file: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask, True where a weight counts as pruned (the set Omega^c of the paper)."""
    if settings.kind == "zeros":
        return weight == 0
    if settings.kind == "threshold":
        return weight.abs() <= settings.threshold
    if settings.kind == "detector":
        assert settings.detector is not None
        return detected_mask(weight, settings.detector, settings.share)
    if mask_from_file is None:
        raise HarnessError(f"the mask file {settings.file} has no entry for layer '{layer}'", key="mask.file")
    if tuple(mask_from_file.shape) != tuple(weight.shape):
        raise HarnessError(
            f"{settings.file}: mask for {layer} has shape {tuple(mask_from_file.shape)}, "
            f"the weight has {tuple(weight.shape)}"
        )
    return mask_from_file.to(torch.bool)
