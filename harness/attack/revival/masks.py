"""Finding the pruned positions of a weight matrix: exact zeros, a mask file, near-zero entries,
or a detector of Gaussian-obfuscated weights (`harness.attack.revival.detect`).

Exact zeros count as pruned only in a layer where they make at least `min_pruned_share` of the
entries (`MaskSettings`): a few natural zeros (random weights, an fp16 cast, a fine-tune) do not
make a layer pruned, ConceptPrune's share does. Every layer's decision comes with its reason
(`LayerMask.why`), which the revival's record keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.attack.revival.detect import detected_mask
from harness.attack.revival.settings import MaskSettings
from harness.errors import HarnessError


@dataclass
class LayerMask:
    """A layer's pruned positions and why they are these."""

    pruned: torch.Tensor
    """Boolean, True where a weight counts as pruned (the set Omega^c of the paper)."""
    zeros: int
    """Exact zeros in the weight."""
    zero_share: float
    """zeros / entries."""
    counts_as_pruned: bool
    """The layer has a position to revive."""
    why: str
    """The rule that chose the positions, with the layer's figures."""


def check_finite(weight: torch.Tensor, layer: str) -> None:
    """Non-finite weights make completion meaningless: refuse them up front."""
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise HarnessError(f"layer '{layer}' of the unlearned model: {bad} non-finite weight(s)")


def layer_mask(
    weight: torch.Tensor,
    settings: MaskSettings,
    layer: str,
    mask_from_file: torch.Tensor | None = None,
) -> LayerMask:
    """The layer's pruned positions (on the weight's device) and the reason, by `settings`' rule."""
    zeros = int((weight == 0).sum())
    share = zeros / max(1, weight.numel())
    figures = f"{zeros} exact zero(s), {share:.3g} of {weight.numel()} entries"
    if settings.kind == "zeros":
        if zeros and share >= settings.min_pruned_share:
            return LayerMask(weight == 0, zeros, share, True,
                             f"{figures}, at least min_pruned_share {settings.min_pruned_share:g}: pruned")
        reason = "no exact zero" if not zeros else (
            f"{figures}, below min_pruned_share {settings.min_pruned_share:g}: natural zeros, not pruned")
        return LayerMask(torch.zeros_like(weight, dtype=torch.bool), zeros, share, False, reason)
    pruned = pruned_positions(weight, settings, layer, mask_from_file)
    marked = int(pruned.sum())
    if settings.kind == "threshold":
        rule = f"|w| <= {settings.threshold:g}"
    elif settings.kind == "file":
        rule = f"the mask file {settings.file}"
    else:
        rule = f"detector {settings.detector} at share {'its estimate' if settings.share is None else f'{settings.share:g}'}"
    return LayerMask(pruned, zeros, share, marked > 0, f"{rule}: {marked} entries marked ({figures})")


def pruned_positions(
    weight: torch.Tensor,
    settings: MaskSettings,
    layer: str,
    mask_from_file: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask, True where a weight is marked by the settings' rule (exact zeros: every one,
    whatever their share; `layer_mask` applies `min_pruned_share`)."""
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
    return mask_from_file.to(device=weight.device, dtype=torch.bool)
