"""Gaussian obfuscation and the detectability of paper Eq. 7."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.unlearn.defense import obfuscate
from harness.unlearn.detectability import (
    detectability,
    empirical_detectability,
    exact_zeros,
    modified_share,
    plot_detectability,
    unmodified_sigma,
)


def _layer(seed: int = 0, shape: tuple[int, int] = (64, 256), share: float = 0.05):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator) * 0.05
    mask = torch.rand(shape, generator=generator) < share
    return weight.masked_fill(mask, 0), mask


def test_obfuscation_fills_only_masked_positions_with_gaussian_draws() -> None:
    pruned, mask = _layer()
    result = obfuscate({"w": pruned}, {"w": mask}, sigma=1e-2, seed=3)["w"]
    assert torch.equal(result[~mask], pruned[~mask])
    values = result[mask]
    assert exact_zeros([result]) == 0
    assert abs(float(values.std()) - 1e-2) < 1.5e-3 and abs(float(values.mean())) < 2e-3
    assert exact_zeros([pruned]) == int(mask.sum())  # the input is not changed in place
    again = obfuscate({"w": pruned}, {"w": mask}, sigma=1e-2, seed=3)["w"]
    other = obfuscate({"w": pruned}, {"w": mask}, sigma=1e-2, seed=4)["w"]
    assert torch.equal(result, again) and not torch.equal(result, other)


def test_draws_that_round_to_zero_in_half_precision_are_drawn_again() -> None:
    pruned, mask = _layer()
    half = obfuscate({"w": pruned.half()}, {"w": mask}, sigma=1e-7, seed=0)["w"]
    assert half.dtype == torch.float16 and exact_zeros([half]) == 0
    with pytest.raises(HarnessError, match="too small for torch.float16"):
        obfuscate({"w": pruned.half()}, {"w": mask}, sigma=1e-12, seed=0)


def test_eq7_limits_and_a_hand_value() -> None:
    # equal spreads: a value near zero is modified with the prior probability alpha
    assert detectability(0.01, 0.2, 0.05, 0.05) == pytest.approx(0.2)
    # tiny sigma_M, tiny window: almost every value inside was modified
    assert detectability(1e-6, 0.01, 1e-9, 0.05) > 0.99
    # hand-computed: alpha=0.1, w=sM=0.01, sU=0.05
    a, m, u = 0.1, math.erf(1 / math.sqrt(2)), math.erf(0.2 / math.sqrt(2))
    assert detectability(0.01, 0.1, 0.01, 0.05) == pytest.approx(a * m / (a * m + 0.9 * u))
    grid = detectability(0.01, np.array([[0.01], [0.1]]), np.array([1e-4, 1e-2, 1.0]), 0.05)
    assert grid.shape == (2, 3) and np.all(np.diff(grid, axis=1) < 0) and np.all(grid[1] > grid[0])
    with pytest.raises(HarnessError, match="alpha must lie in"):
        detectability(0.01, 1.0, 0.01, 0.05)


def test_measured_detectability_matches_eq7_on_gaussian_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(400, 1000, generator=generator) * 0.05
    mask = torch.rand(weight.shape, generator=generator) < 0.02
    weight = obfuscate({"w": weight}, {"w": mask}, sigma=0.005, seed=1)["w"]
    sigma_u = unmodified_sigma({"w": weight}, {"w": mask})
    alpha = modified_share({"w": mask})
    assert sigma_u == pytest.approx(0.05, rel=0.01) and alpha == pytest.approx(0.02, rel=0.05)
    for w in (0.002, 0.01, 0.05):
        measured = empirical_detectability({"w": weight}, {"w": mask}, w)
        assert measured == pytest.approx(float(detectability(w, alpha, 0.005, sigma_u)), abs=0.02)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = plot_detectability(tmp_path / "fig7.png", sigma_u=0.05, widths=[0.005, 0.05], marker=(0.01, 1e-3))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))
