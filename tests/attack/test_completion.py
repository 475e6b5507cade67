"""Known-answer tests of matrix completion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.attack.revival.completion import (
    lambda_path,
    reference_code_impute,
    soft_impute,
    soft_threshold,
    top_singular_value,
)
from harness.attack.revival.settings import CompletionSettings


def numpy_soft_impute(x: np.ndarray, observed: np.ndarray, lam: float, tol: float, max_iters: int) -> np.ndarray:
    """Plain SoftImpute: zero fill, full SVD and soft threshold every iteration, fixed lambda."""
    m = np.zeros_like(x)
    for _ in range(max_iters):
        z = np.where(observed, x, m)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        new = (u * np.maximum(s - lam, 0)) @ vt
        change = np.linalg.norm((new - m)[~observed]) / max(np.linalg.norm(m[~observed]), 1e-30)
        m = new
        if change < tol:
            break
    return m


def low_rank(rows: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, cols, generator=gen, dtype=torch.float64
    )


def random_observed(shape: tuple[int, int], missing: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) >= missing


def test_low_rank_matrix_is_completed() -> None:
    truth = low_rank(40, 60, 3, seed=1)
    observed = random_observed(truth.shape, 0.2, seed=2)
    settings = CompletionSettings(lambda_ratio=1e-4, tol=1e-9, max_iters=2000, dtype="float64")
    result = soft_impute(torch.where(observed, truth, 0.0), observed, settings)
    error = (result.matrix - truth)[~observed].norm() / truth[~observed].norm()
    assert error < 1e-2
    assert result.converged


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_same_fixed_point_as_plain_numpy_soft_impute(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(3)
    x = low_rank(*shape, 5, seed=4) + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    observed = random_observed(shape, 0.1, seed=5)
    known = torch.where(observed, x, 0.0)
    settings = CompletionSettings(lambda_ratio=0.05, tol=1e-10, max_iters=5000, dtype="float64")
    ours = soft_impute(known, observed, settings)
    lam = 0.05 * top_singular_value(known)
    assert ours.lam == pytest.approx(lam, rel=1e-12)
    reference = numpy_soft_impute(known.numpy(), observed.numpy(), lam, tol=1e-10, max_iters=5000)
    missing = (~observed).numpy()
    np.testing.assert_allclose(ours.matrix.numpy()[missing], reference[missing], rtol=1e-5, atol=1e-6)
    s = np.linalg.svd(reference, compute_uv=False)
    objective = 0.5 * np.sum(((x.numpy() - reference) * observed.numpy()) ** 2) + lam * s.sum()
    assert ours.objective == pytest.approx(objective, rel=1e-6)


def test_solution_is_a_fixed_point_of_the_soft_impute_map() -> None:
    x = low_rank(32, 96, 4, seed=6).float() + 0.1 * torch.randn(32, 96, generator=torch.Generator().manual_seed(7))
    observed = random_observed(x.shape, 0.02, seed=8)
    result = soft_impute(torch.where(observed, x, 0.0), observed, CompletionSettings(tol=1e-7, max_iters=500))
    z = torch.where(observed, x, result.matrix)
    again, _ = soft_threshold(z, result.lam)
    assert float((again - result.matrix).norm() / result.matrix.norm()) < 1e-4


def test_soft_threshold_matches_svd_definition_and_max_rank() -> None:
    z = torch.randn(20, 35, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    u, s, vt = torch.linalg.svd(z, full_matrices=False)
    lam = float(s[6])
    expected = (u * (s - lam).clamp(min=0)) @ vt
    got, kept = soft_threshold(z, lam)
    torch.testing.assert_close(got, expected)
    assert kept.numel() == 6
    torch.testing.assert_close(soft_threshold(z.T, lam)[0], expected.T)
    capped, kept = soft_threshold(z, lam, max_rank=2)
    assert kept.numel() == 2
    torch.testing.assert_close(capped, (u[:, :2] * (s[:2] - lam)) @ vt[:2])


def test_lambda_path_decreases_geometrically_to_the_target() -> None:
    path = lambda_path(100.0, 0.02, 4)
    assert path[-1] == pytest.approx(2.0)
    assert all(a > b for a, b in zip(path, path[1:]))
    assert path[0] < 100.0


def test_reference_code_mode_keeps_observed_entries_and_thresholds_by_smallest_singular_value() -> None:
    noise = torch.randn(12, 20, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = low_rank(12, 20, 3, seed=10) + 0.01 * noise
    observed = random_observed(x.shape, 0.1, seed=12)
    result = reference_code_impute(torch.where(observed, x, 0.0), observed, max_iters=300, tol=1e-7)
    torch.testing.assert_close(result.matrix[observed], x[observed])
    assert result.rank == 11  # every singular value but the smallest survives the threshold
    error = (result.matrix - x)[~observed].norm() / x[~observed].norm()
    assert error < 0.5
