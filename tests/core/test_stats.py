"""Wilson intervals: scipy's, checked against PROTOCOL section 8's closed form, and their contract."""

from __future__ import annotations

import math

import pytest

from harness.stats import Z95, wilson_interval


def closed_form(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The closed form the harness used before scipy's (Wilson 1927), clamped to hold the share."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return min(p, max(0.0, (centre - spread) / denominator)), max(p, min(1.0, (centre + spread) / denominator))


def test_scipy_wilson_interval_agrees_with_the_closed_form_on_a_grid() -> None:
    counts = [(k, n) for n in range(1, 121) for k in range(n + 1)]
    counts += [(k, n) for n in (500, 1000, 10**5) for k in (0, 1, 2, n // 7, n // 3, n // 2, n - 1, n)]
    worst = max(abs(a - b) for k, n in counts for a, b in zip(wilson_interval(k, n), closed_form(k, n)))
    assert worst < 1e-12
    assert wilson_interval(3, 10, z=1.0) == pytest.approx(closed_form(3, 10, z=1.0), abs=1e-12)


def test_wilson_interval_contract() -> None:
    assert wilson_interval(0, 0) is None and wilson_interval(3, 0) is None
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="0..10"):
            wilson_interval(bad, 10)
    assert wilson_interval(0, 7) == (0.0, pytest.approx(closed_form(0, 7)[1], abs=1e-12))
    assert wilson_interval(7, 7)[1] == 1.0
    assert all(isinstance(bound, float) for bound in wilson_interval(2, 7))
