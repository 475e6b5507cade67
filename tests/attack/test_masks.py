"""Which exact zeros count as pruned: a layer's zeros count only at `min_pruned_share` of its
entries or more, and the revival's record says per layer why (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.attack.revival.masks import layer_mask
from harness.attack.revival.settings import MIN_PRUNED_SHARE, MaskSettings
from harness.cli import main
from harness.layout import AttackFiles
from harness.models.checkpoints import save_tensors
from harness.records import AttackRecord, read_record
from harness.unlearn.conceptprune import skilled_mask

FFN = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight"


def sd_like(rows: int = 320, cols: int = 1280, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.02


def natural(weight: torch.Tensor, count: int = 3, seed: int = 1) -> torch.Tensor:
    """`count` scattered exact zeros, as random fp32 weights or an fp16 cast hold by chance."""
    flat = weight.clone().flatten()
    flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:count]] = 0
    return flat.view_as(weight)


def conceptpruned(weight: torch.Tensor, skill_ratio: float = 0.02, calls: int = 3, seed: int = 2) -> torch.Tensor:
    """ConceptPrune's own mask (`skilled_mask`, top k = skill_ratio * in_features per row over
    `calls` UNet calls) with random activation norms, its entries zeroed."""
    gen = torch.Generator().manual_seed(seed)
    base, target = torch.rand(calls, weight.shape[1], generator=gen), torch.rand(calls, weight.shape[1], generator=gen)
    mask = skilled_mask(weight, base, target, int(skill_ratio * weight.shape[1]))
    return weight.masked_fill(mask, 0)


def test_three_natural_zeros_are_not_pruned_and_conceptprune_is() -> None:
    found = layer_mask(natural(sd_like()), MaskSettings(), FFN)
    assert not found.counts_as_pruned and not found.pruned.any() and found.zeros == 3
    assert "below min_pruned_share 0.0001: natural zeros, not pruned" in found.why and "3 exact zero(s)" in found.why
    weight = conceptpruned(sd_like())
    found = layer_mask(weight, MaskSettings(), FFN)
    assert 0.005 < found.zero_share < 0.05  # skill_ratio 0.02, union over 3 calls of random norms
    assert found.counts_as_pruned and found.pruned.equal(weight == 0) and found.why.endswith(": pruned")
    assert found.zero_share > 50 * MIN_PRUNED_SHARE > 50 * 3 / (1280 * 5120)
    assert layer_mask(sd_like(), MaskSettings(), FFN).why == "no exact zero"


def test_the_share_is_the_users_to_choose() -> None:
    weight = natural(sd_like())
    found = layer_mask(weight, MaskSettings(min_pruned_share=0), FFN)  # every exact zero, as before
    assert found.counts_as_pruned and int(found.pruned.sum()) == 3
    assert not layer_mask(conceptpruned(sd_like()), MaskSettings(min_pruned_share=0.5), FFN).counts_as_pruned
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="min_pruned_share must lie in"):
            MaskSettings(min_pruned_share=bad)


def test_a_model_with_natural_zeros_is_not_applicable_and_the_record_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tensors({FFN: natural(sd_like(256, 1024))}, tmp_path / "natural.safetensors")
    assert main(["revive", "--unlearned", str(tmp_path / "natural.safetensors"), "--out", str(tmp_path / "n")]) == 2
    error = capsys.readouterr().err
    assert "no layer's exact zeros reach min_pruned_share 0.0001" in error and f"{FFN}, 3 zero(s)" in error
    record = read_record(AttackRecord, AttackFiles(tmp_path / "n").record)
    assert not record.applicable and "min_pruned_share" in record.reason
    assert main(["revive", "--unlearned", str(tmp_path / "natural.safetensors"), "--out", str(tmp_path / "z"),
                 "--min-pruned-share", "0"]) == 0
    layer = read_record(AttackRecord, AttackFiles(tmp_path / "z").record).revival.layers[0]
    assert layer.pruned == 3 and layer.counts_as_pruned and layer.zeros == 3

    weight = conceptpruned(sd_like(64, 256), skill_ratio=0.05)
    save_tensors({FFN: weight}, tmp_path / "pruned.safetensors")
    assert main(["revive", "--unlearned", str(tmp_path / "pruned.safetensors"), "--out", str(tmp_path / "p")]) == 0
    layer = read_record(AttackRecord, AttackFiles(tmp_path / "p").record).revival.layers[0]
    assert layer.counts_as_pruned and layer.pruned == layer.zeros == int((weight == 0).sum())
    assert layer.zero_share == pytest.approx(layer.zeros / weight.numel()) and "at least min_pruned_share" in layer.why
    assert not (tmp_path / "p" / ".masks.safetensors").exists()
