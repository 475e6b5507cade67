"""The accelerated SoftImpute: same convex solution as the plain algorithm, cheap iterations that
stay exact, batching, the fixed-point residual and the float32 stall."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from harness.attack.revival import completion
from harness.attack.revival.completion import (
    ACCELERATIONS,
    CompletionResult,
    fixed_point_residual,
    soft_impute,
    soft_impute_batch,
    soft_threshold,
)
from harness.attack.revival.settings import CompletionSettings


@pytest.fixture(scope="module")
def soft_impute_plain(benchmark_function):
    """The previous (plain) SoftImpute, the reference."""
    return benchmark_function("plain_soft_impute", "soft_impute_plain")


def noisy_low_rank(rows: int, cols: int, seed: int, missing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, cols, generator=gen, dtype=torch.float64)
    x = x + 0.3 * torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    observed = torch.rand(rows, cols, generator=gen) >= missing
    return torch.where(observed, x, 0.0), observed


def weight_like(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD-like: a flat spectrum, 2% of each row pruned at its largest |w| (as a concept mask)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen))
    w = (u * torch.arange(1, rows + 1, dtype=torch.float32) ** -0.4) @ v.T
    pruned = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.abs().topk(max(1, cols // 50), dim=1).indices, True)
    return torch.where(pruned, 0.0, w), ~pruned


TIGHT = CompletionSettings(lambda_ratio=0.05, tol=1e-10, max_iters=5000, dtype="float64")


@pytest.mark.parametrize("acceleration", ACCELERATIONS)
@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_accelerated_reaches_the_plain_algorithms_fixed_point(acceleration: str, shape: tuple[int, int],
                                                             soft_impute_plain) -> None:
    known, observed = noisy_low_rank(*shape, seed=4)
    plain = soft_impute_plain(known, observed, TIGHT)
    fast = soft_impute(known, observed, TIGHT, acceleration=acceleration)
    assert fast.converged and fast.lam == pytest.approx(plain.lam, rel=1e-12)
    assert fast.objective == pytest.approx(plain.objective, rel=1e-9)
    missing = ~observed
    assert torch.equal(torch.sign(fast.matrix[missing]), torch.sign(plain.matrix[missing]))
    torch.testing.assert_close(fast.matrix, plain.matrix, rtol=0, atol=1e-7)
    assert fast.residual < 1e-9 and fast.change < TIGHT.tol
    assert fast.dtype_used == "float64" and fast.algorithm == acceleration
    assert sum(fast.stage_iterations) == fast.iterations
    if acceleration != "none":
        assert fast.iterations < plain.iterations


def test_accelerated_on_a_flat_sd_like_spectrum_in_fewer_iterations(soft_impute_plain) -> None:
    known, observed = weight_like(48, 192, seed=1)
    settings = CompletionSettings(tol=1e-9, max_iters=2000, dtype="float64")
    plain = soft_impute_plain(known, observed, settings)
    fast = soft_impute(known, observed, settings)
    assert fast.objective == pytest.approx(plain.objective, rel=1e-10)
    assert torch.equal(torch.sign(fast.matrix[~observed]), torch.sign(plain.matrix[~observed]))
    assert fast.iterations * 2 < plain.iterations


def test_default_float32_result_is_within_1e6_of_the_tight_objective() -> None:
    known, observed = weight_like(48, 192, seed=2)
    tight = soft_impute(known, observed, CompletionSettings(tol=1e-10, max_iters=2000, dtype="float64"))
    default = soft_impute(known, observed, CompletionSettings())
    assert default.dtype_used == "float32" and default.converged
    exact = completion.objective(known.double(), observed, default.matrix.double(), tight.lam,
                                 float(torch.linalg.svdvals(default.matrix.double()).sum()))
    assert abs(exact - tight.objective) / tight.objective < 1e-6
    agree = (torch.sign(default.matrix[~observed]) == torch.sign(tight.matrix[~observed])).double().mean()
    assert agree >= 0.99


def test_incremental_gram_update_matches_the_exact_gram() -> None:
    known, observed = noisy_low_rank(20, 70, seed=3, missing=0.05)
    layer = completion._Layer(known, observed, CompletionSettings(dtype="float64", stage_tol=None, acceleration="none"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        layer.move_to(torch.randn(layer.y.shape, generator=gen, dtype=torch.float64), gram_refresh=10**6)
    z = torch.where(observed, known, torch.zeros((), dtype=torch.float64))
    z[~observed] = layer.y  # y is in row-major order of the missing entries
    exact = z @ z.T
    assert layer.since_refresh == 30  # no refresh happened: all updates were incremental
    torch.testing.assert_close(layer.gram, exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.zt.T, z, rtol=0, atol=0)


def test_incremental_gram_update_in_the_tall_orientation() -> None:
    known, observed = noisy_low_rank(70, 20, seed=5, missing=0.05)
    layer = completion._Layer(known, observed, CompletionSettings(dtype="float64", stage_tol=None, acceleration="none"))
    for step in range(5):
        layer.move_to(layer.y + 0.5 * (step + 1), gram_refresh=10**6)
    z = torch.where(observed, known, torch.zeros((), dtype=torch.float64)).T.clone()  # the wide side
    z[~observed.T] = layer.y
    torch.testing.assert_close(layer.gram, z @ z.T, rtol=1e-12, atol=1e-12)


def test_batched_completion_equals_per_layer_completion() -> None:
    data = [noisy_low_rank(30, 80, seed=1), noisy_low_rank(30, 80, seed=2), noisy_low_rank(80, 30, seed=3),
            noisy_low_rank(20, 40, seed=6)]
    settings = CompletionSettings(tol=1e-8, max_iters=500, dtype="float64")
    alone = [soft_impute(x, o, settings) for x, o in data]
    together = soft_impute_batch([x for x, _ in data], [o for _, o in data], settings)
    for a, b in zip(alone, together):
        assert a.iterations == b.iterations and a.rank == b.rank
        torch.testing.assert_close(b.matrix, a.matrix, rtol=0, atol=1e-12)
        assert b.objective == pytest.approx(a.objective, rel=1e-12)


def test_reported_residual_is_the_fixed_point_residual(soft_impute_plain) -> None:
    known, observed = noisy_low_rank(25, 60, seed=7)
    result = soft_impute(known, observed, CompletionSettings(tol=1e-4, dtype="float64"))
    again, _ = soft_threshold(torch.where(observed, known, result.matrix), result.lam)
    expected = float((again - result.matrix).norm() / result.matrix.norm())
    assert result.residual == pytest.approx(expected, rel=1e-9)
    assert result.residual == pytest.approx(fixed_point_residual(known, observed, result.matrix, result.lam), rel=1e-12)
    assert 0 < result.residual < 1e-3
    assert soft_impute_plain(known, observed, CompletionSettings(tol=1e-4, dtype="float64")).residual > 0
    assert soft_impute(known, observed, CompletionSettings(), residual=False).residual is None


def test_float32_stall_continues_in_float64(caplog: pytest.LogCaptureFixture) -> None:
    known, observed = weight_like(48, 192, seed=3)
    settings = CompletionSettings(tol=1e-9, max_iters=400)  # float32 cannot reach 1e-9
    with caplog.at_level(logging.WARNING, logger="harness.attack.revival.completion"):
        result = soft_impute(known, observed, settings)
    assert result.converged and result.change < 1e-9
    assert result.dtype_used == "float64" and result.matrix.dtype == torch.float64
    assert any("float32 cannot reach the tolerance; continued in float64" in note for note in result.notes)
    assert "continued in float64" in caplog.text
    assert result.iterations < 100  # far from max_iters
    reference = soft_impute(known, observed, CompletionSettings(tol=1e-9, max_iters=400, dtype="float64"))
    assert result.lam == pytest.approx(reference.lam, rel=1e-6)  # s1 was computed in float32
    assert result.objective == pytest.approx(reference.objective, rel=1e-6)
    assert torch.equal(torch.sign(result.matrix[~observed]), torch.sign(reference.matrix[~observed]))


def test_float32_stall_can_stop_with_a_clear_note_instead(caplog: pytest.LogCaptureFixture) -> None:
    known, observed = weight_like(48, 192, seed=3)
    with caplog.at_level(logging.WARNING, logger="harness.attack.revival.completion"):
        result = soft_impute(known, observed, CompletionSettings(tol=1e-9, max_iters=400), on_stall="stop")
    assert not result.converged and result.dtype_used == "float32"
    assert result.iterations < 100
    assert any("stopped unconverged" in note and "float32" in note for note in result.notes)
    assert "stopped unconverged" in caplog.text
    with pytest.raises(ValueError, match="on_stall"):
        soft_impute(known, observed, CompletionSettings(), on_stall="ignore")


def test_reachable_float32_tolerance_does_not_count_as_a_stall() -> None:
    known, observed = weight_like(48, 192, seed=3)
    result = soft_impute(known, observed, CompletionSettings(tol=1e-5))
    assert result.converged and result.dtype_used == "float32" and not result.notes


def test_slow_but_steady_progress_is_not_a_stall() -> None:
    gen = torch.Generator().manual_seed(1)
    truth = torch.randn(40, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 60, generator=gen, dtype=torch.float64)
    observed = torch.rand(truth.shape, generator=torch.Generator().manual_seed(2)) >= 0.2
    settings = CompletionSettings(lambda_ratio=1e-4, tol=1e-9, max_iters=2000, dtype="float64")
    result = soft_impute(torch.where(observed, truth, 0.0), observed, settings)
    assert result.converged and not result.notes


def test_nothing_missing_gives_the_soft_thresholded_matrix() -> None:
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    observed = torch.ones_like(x, dtype=torch.bool)
    result = soft_impute(x, observed, CompletionSettings(dtype="float64"))
    expected, kept = soft_threshold(x, result.lam)
    torch.testing.assert_close(result.matrix, expected)
    assert result.converged and result.rank == kept.numel() and isinstance(result, CompletionResult)


def test_max_rank_caps_the_rank() -> None:
    known, observed = noisy_low_rank(30, 50, seed=9)
    result = soft_impute(known, observed, CompletionSettings(tol=1e-6, dtype="float64", max_rank=3))
    assert result.rank == 3
    assert int((torch.linalg.svdvals(result.matrix) > 1e-9).sum()) == 3


def test_unknown_acceleration_is_refused() -> None:
    known, observed = noisy_low_rank(10, 12, seed=10)
    with pytest.raises(ValueError, match="acceleration"):
        soft_impute(known, observed, CompletionSettings(), acceleration="momentum")


def test_solver_options_come_from_settings_fields_and_keywords_override_them() -> None:
    """One place for the options' defaults: CompletionSettings; soft_impute's keywords replace fields."""
    settings = CompletionSettings()
    assert {name: getattr(settings, name) for name in completion.SOLVER_OPTIONS} == {
        "acceleration": "anderson", "gram_refresh": 20, "stall_patience": 10, "on_stall": "float64",
        "stage_tol": 3e-2, "residual": True}
    known, observed = noisy_low_rank(20, 40, seed=11)
    chosen = dataclasses.replace(settings, acceleration="nesterov", stage_tol=None)
    by_settings = soft_impute(known, observed, chosen)
    by_keywords = soft_impute(known, observed, settings, acceleration="nesterov", stage_tol=None)
    assert by_settings.algorithm == by_keywords.algorithm == "nesterov" and chosen.gram_refresh == 20
    assert by_settings.iterations == by_keywords.iterations
    torch.testing.assert_close(by_keywords.matrix, by_settings.matrix, rtol=0, atol=0)
    assert soft_impute(known, observed, dataclasses.replace(settings, residual=False)).residual is None
    with pytest.raises(TypeError, match="unknown solver options"):
        soft_impute(known, observed, settings, tol=1e-6)
