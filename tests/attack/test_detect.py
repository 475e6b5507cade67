"""Detectors of Gaussian-obfuscated weights (harness.attack.revival.detect) and their use as revival masks."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.attack.revival import detect
from harness.attack.revival.masks import pruned_positions
from harness.attack.revival.settings import MaskSettings
from harness.cli import main
from harness.errors import HarnessError
from harness.layout import AttackFiles
from harness.models.checkpoints import save_tensors
from harness.records import AttackRecord, read_record

SIGMA_U = 0.05
FFN = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight"


@pytest.fixture(scope="module")
def fit_mixture_reference(benchmark_function):
    """The previous (float64, one start after the other) EM fit."""
    return benchmark_function("eq7_reference", "fit_mixture_reference")


def planted(sigma_m: float, rows: int = 64, cols: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """N(0, SIGMA_U^2) entries with 2-5% of every row's entries (random positions) replaced by N(0, sigma_m^2)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen) * SIGMA_U
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for row in range(rows):
        count = int(torch.randint(int(0.02 * cols), int(0.05 * cols) + 1, (1,), generator=gen))
        mask[row, torch.randperm(cols, generator=gen)[:count]] = True
    weight[mask] = torch.randn(int(mask.sum()), generator=gen) * sigma_m
    return weight, mask


def structured(sigma_m: float, seed: int = 0, share: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-4-plus-noise 64 x 256 matrix whose 10 'skilled' columns are mostly (`share`, by
    default 90%) obfuscated, as ConceptPrune's mask looks on a feed-forward's output matrix."""
    return skilled(sigma_m, seed, share)[:2]


def skilled(sigma_m: float, seed: int = 0, share: float = 0.9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`structured`'s matrix and mask, and the indices of its skilled columns."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(64, 4, generator=gen) @ torch.randn(4, 256, generator=gen) * (SIGMA_U / 2)
    weight += 0.2 * SIGMA_U * torch.randn(64, 256, generator=gen)
    mask = torch.zeros(64, 256, dtype=torch.bool)
    columns = torch.randperm(256, generator=gen)[:10]
    mask[:, columns] = torch.rand(64, 10, generator=gen) < share
    weight[mask] = torch.randn(int(mask.sum()), generator=gen) * sigma_m
    return weight, mask, columns


def test_eq7_finds_a_planted_mask_at_tiny_sigma_and_nothing_at_sigma_u() -> None:
    weight, mask = planted(sigma_m=1e-3)  # sigma_M^2 = 1e-6
    assert detect.auroc(detect.eq7(weight), mask) > 0.95
    fit = detect.fit_mixture(weight)
    assert fit.alpha == pytest.approx(float(mask.float().mean()), rel=0.25)
    assert fit.sigma_m < 3e-3 and fit.sigma_u == pytest.approx(SIGMA_U, rel=0.1)
    found = detect.detected_mask(weight, "eq7")  # at the estimated share: ~0.6 of the planted entries
    hits = float((found & mask).sum())
    assert hits / float(mask.sum()) > 0.5 and hits / float(found.sum()) > 0.5
    same, same_mask = planted(sigma_m=SIGMA_U, seed=1)
    for name in ("eq7", "magnitude", "lowrank", "columns"):
        assert abs(detect.auroc(detect.resolve_detector(name)(same), same_mask) - 0.5) < 0.1, name


def test_eq7_with_given_settings_is_the_posterior() -> None:
    mixture = detect.Mixture(alpha=0.1, sigma_m=0.01, sigma_u=0.05)
    w = torch.tensor([0.0, 0.01, 0.2])
    density = lambda x, s: math.exp(-x * x / (2 * s * s)) / s  # noqa: E731
    expected = [0.1 * density(x, 0.01) / (0.1 * density(x, 0.01) + 0.9 * density(x, 0.05)) for x in w.tolist()]
    assert detect.eq7(w, mixture).tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="alpha must lie in"):
        detect.eq7(w, detect.Mixture(alpha=1.0, sigma_m=0.01, sigma_u=0.05))


def test_eq7_flags_large_draws_when_sigma_m_exceeds_sigma_u() -> None:
    weight, mask = planted(sigma_m=10 * SIGMA_U)
    assert detect.auroc(detect.eq7(weight), mask) > 0.9
    assert detect.auroc(detect.magnitude(weight), mask) < 0.1


@pytest.mark.parametrize("sigma_m", [1e-3, SIGMA_U, 10 * SIGMA_U])
def test_lowrank_finds_obfuscated_columns_at_any_sigma(sigma_m: float) -> None:
    weight, mask = structured(sigma_m)
    assert detect.auroc(detect.lowrank(weight), mask) > 0.95
    found = detect.detected_mask(weight, "lowrank")
    assert float((found & mask).sum() / mask.sum()) > 0.95
    assert abs(detect.estimated_share(weight, "lowrank") * 256 - 10) <= 2  # the flagged columns' share


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columns_finds_the_obfuscated_part_of_skilled_columns_at_tiny_sigma(seed: int) -> None:
    """Skilled columns 70% obfuscated, the rest of each left as it was (and out of the mask):
    `columns` marks the obfuscated entries only, at its own share. (At exactly half obfuscated a
    column's residual share is ~0.5, right at `flagged`'s cut, and 1-3 of the 10 columns can be
    missed on this small matrix: recall 0.62-0.97 over seeds.)"""
    weight, mask = structured(sigma_m=1e-3, seed=seed, share=0.7)
    found = detect.detected_mask(weight, "columns")
    hits = float((found & mask).sum())
    assert hits / float(found.sum()) > 0.7 and hits / float(mask.sum()) > 0.7
    assert detect.estimated_share(weight, "columns") == pytest.approx(float(mask.float().mean()), rel=0.3)
    scores = detect.columns(weight)
    hit = detect.flagged_columns(weight)
    assert scores[:, hit].min() > scores[:, ~hit].max()  # flagged columns first, whatever |w|


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_columns_cannot_split_a_column_when_sigma_m_is_the_weights_scale(seed: int) -> None:
    """With sigma_M = the entries' own scale, the draws inside a skilled column look like the kept
    entries: AUC over the skilled columns' entries ~0.5 (the columns themselves are still found)."""
    weight, mask, columns = skilled(sigma_m=SIGMA_U, seed=seed, share=0.7)
    assert abs(detect.auroc(detect.columns(weight)[:, columns], mask[:, columns]) - 0.5) < 0.15
    assert detect.auroc(detect.columns(weight), mask) > 0.9


def test_detected_mask_keeps_the_given_share_and_checks_it() -> None:
    weight, _ = planted(sigma_m=1e-3)
    found = detect.detected_mask(weight, "magnitude", share=0.1)
    assert found.shape == weight.shape and int(found.sum()) == math.ceil(0.1 * weight.numel())
    assert weight[found].abs().max() <= weight[~found].abs().min()
    assert detect.detected_mask(weight, lambda w: w, share=0.5).sum() == weight.numel() // 2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=f"mask share must lie in \\(0, 1\\), got {bad}"):
            detect.detected_mask(weight, "eq7", share=bad)
    with pytest.raises(HarnessError, match="unknown detector 'nope'"):
        detect.detected_mask(weight, "nope")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"detector": "nope"}, "unknown mask detector 'nope' (known: eq7, lowrank, columns, magnitude)"),
        ({"detector": "eq7", "share": 1.5}, "mask share must lie in (0, 1), got 1.5"),
        ({"detector": "eq7", "share": 0.0}, "mask share must lie in (0, 1), got 0.0"),
        ({"share": 0.1}, "mask share 0.1 needs a mask detector"),
        ({"detector": "eq7", "file": "m.safetensors"}, "mask detector 'eq7': give a detector, a mask file or a threshold"),
        ({"detector": "lowrank", "threshold": 0.01}, "mask detector 'lowrank': give a detector, a mask file or a threshold"),
    ],
)
def test_bad_mask_settings_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        MaskSettings(**settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_detector_kind_gives_the_detected_positions() -> None:
    weight, _ = planted(sigma_m=1e-3)
    settings = MaskSettings(detector="eq7", share=0.03)
    assert settings.kind == "detector" and MaskSettings().kind == "zeros"
    assert pruned_positions(weight, settings, "w").equal(detect.detected_mask(weight, "eq7", 0.03))


@pytest.mark.parametrize("detector", ["lowrank", "columns"])
def test_revive_with_a_detector_revives_the_detected_positions(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               detector: str) -> None:
    """`harness revive --mask-detector NAME` on an obfuscated layer: the detected positions get
    new values, every other entry is kept, and most revived entries are the planted ones."""
    weight, mask = structured(sigma_m=1e-3)
    save_tensors({FFN: weight}, tmp_path / "unlearned.safetensors")
    out = tmp_path / "out"
    assert main(["revive", "--unlearned", str(tmp_path / "unlearned.safetensors"), "--out", str(out),
                 "--mask-detector", detector, "--device", "cpu"]) == 0
    revived = load_file(str(AttackFiles(out).tensors))[FFN]
    found = detect.detected_mask(weight, detector)
    assert revived[~found].equal(weight[~found])
    changed = revived != weight
    assert changed.any() and not (changed & ~found).any()
    assert float((changed & mask).sum() / changed.sum()) > 0.7
    layer = read_record(AttackRecord, AttackFiles(out).record).revival.layers[0]
    assert layer.pruned == int(found.sum())
    capsys.readouterr()
    assert main(["revive", "--unlearned", str(tmp_path / "unlearned.safetensors"), "--out", str(tmp_path / "o2"),
                 "--mask-detector", "eq7", "--mask-share", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mask share must lie in (0, 1), got 2.0" in err and "\n" not in err


@pytest.mark.parametrize(("sigma_m", "dtype"), [(1e-3, torch.float32), (SIGMA_U, torch.float32),
                                               (10 * SIGMA_U, torch.float32), (0.0, torch.float32),
                                               (1e-3, torch.float16), (1e-3, torch.float64)])
def test_the_torch_fit_is_the_reference_fit(sigma_m: float, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch,
                                            fit_mixture_reference) -> None:
    """The EM (float32 entries, float64 sums, both starts at once) gives the previous float64 fit's
    parameters, also with exact zeros (sigma_m 0: the narrow component collapses onto them), an
    fp16 weight, and sums over several pieces; eq7's scores follow."""
    weight, _ = planted(sigma_m, rows=64, cols=1024, seed=3)
    weight = weight.to(dtype)
    monkeypatch.setattr(detect, "FIT_PIECE", 5000)  # several pieces, one shorter
    reference, fit = fit_mixture_reference(weight), detect.fit_mixture(weight)
    assert fit.alpha == pytest.approx(reference.alpha, rel=1e-5)
    assert fit.sigma_m == pytest.approx(reference.sigma_m, rel=1e-5)
    assert fit.sigma_u == pytest.approx(reference.sigma_u, rel=1e-5)
    if sigma_m:
        torch.testing.assert_close(detect.eq7(weight), detect.eq7(weight, reference), rtol=1e-4, atol=1e-9)
    else:
        assert bool(torch.isfinite(detect.eq7(weight)).all())


def test_a_detected_mask_fits_the_mixture_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """eq7's scores and its share estimate share one fit; a changed weight is fitted again."""
    calls = []
    fit = detect._fit
    monkeypatch.setattr(detect, "_fit", lambda weight, iterations: calls.append(1) or fit(weight, iterations))
    weight, _ = planted(sigma_m=1e-3)
    detect.detected_mask(weight, "eq7")
    assert len(calls) == 1
    weight.mul_(2)
    detect.detected_mask(weight, "eq7")
    assert len(calls) == 2


class _Process:
    """Enough of an Accelerator for `found_once`: two of them meet at a shared barrier."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes, self.barrier = rank, 2, barrier
        self.is_main_process = self.is_local_main_process = rank == 0

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=30)


def test_the_masks_are_found_once_and_shared_with_every_process(tmp_path: Path) -> None:
    from harness.attack.revival.masks import layer_mask
    from harness.attack.revival.runner import found_once

    weight, _ = planted(sigma_m=1e-3)
    weight[weight.abs() < 2e-3] = 0
    barrier, calls, results, errors = threading.Barrier(2), [], {}, {}
    shared = tmp_path / "out" / ".masks.safetensors"

    def find() -> dict:
        calls.append(1)
        return {"w": layer_mask(weight, MaskSettings(), "w")}

    def process(rank: int, finder) -> None:
        try:
            results[rank] = found_once(finder, _Process(rank, barrier), shared)
        except Exception as error:  # noqa: BLE001 (compared below)
            errors[rank] = error

    threads = [threading.Thread(target=process, args=(rank, find)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert calls == [1] and not errors
    assert results[0]["w"].pruned.equal(results[1]["w"].pruned) and results[1]["w"].why == results[0]["w"].why
    assert results[1]["w"].counts_as_pruned and results[1]["w"].zeros == int((weight == 0).sum())
    assert not shared.exists()

    def broken() -> dict:
        raise HarnessError("no such detector")

    threads = [threading.Thread(target=process, args=(rank, broken)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert "no such detector" in str(errors[0]) and "no such detector" in str(errors[1])
    assert not shared.exists()


@pytest.mark.parametrize("shape", [(40, 90), (90, 40)])
def test_the_gram_eigendecomposition_gives_the_svds_left_subspace(shape: tuple[int, int]) -> None:
    """`lowrank` and `columns` take a wide matrix's left singular vectors from its Gram matrix:
    the same singular values and top subspaces as the SVD (which a tall matrix still uses)."""
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    matrix += torch.randn(shape[0], 3, dtype=torch.float64) @ torch.randn(3, shape[1], dtype=torch.float64)
    vectors, values = detect._left_singular(matrix)
    svd_vectors, svd_values, _ = torch.linalg.svd(matrix, full_matrices=False)
    torch.testing.assert_close(values[:min(shape)], svd_values, rtol=1e-9, atol=1e-9)
    for rank in (1, 3, 10):
        torch.testing.assert_close(vectors[:, :rank] @ vectors[:, :rank].T, svd_vectors[:, :rank] @ svd_vectors[:, :rank].T,
                                   rtol=0, atol=1e-8)
