"""Intervals for shares: every accuracy or rate the harness reports carries its n and a 95%
Wilson score interval (PROTOCOL.md section 8)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of `successes` out of `n` (scipy's), z standard errors wide;
    None for n = 0. It always holds the share itself (at 0 and n the closed form can miss it by a
    rounding error)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    # imported here, not at the top: importing scipy.stats takes most of a second
    from scipy.stats import binomtest

    p = successes / n
    interval = binomtest(successes, n).proportion_ci(confidence_level=math.erf(z / math.sqrt(2)), method="wilson")
    return min(p, max(0.0, float(interval.low))), max(p, min(1.0, float(interval.high)))


def format_share(value: float | None, n: int, interval: tuple[float, float] | list[float] | None, digits: int = 2) -> str:
    """`0.80 [0.49, 0.94] n=10`, or `n/a` when there is no share to give (no such images)."""
    if value is None or interval is None:
        return "n/a"
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] n={n}"
