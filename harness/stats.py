"""Intervals for shares: every accuracy or rate the harness reports carries its n and a 95%
Wilson score interval (PROTOCOL.md section 8)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of `successes` out of `n`; None for n = 0. It always holds the
    share itself (at 0 and n the closed form misses it by a rounding error)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return min(p, max(0.0, (centre - spread) / denominator)), max(p, min(1.0, (centre + spread) / denominator))


def format_share(value: float | None, n: int, interval: tuple[float, float] | list[float] | None, digits: int = 2) -> str:
    """`0.80 [0.49, 0.94] n=10`, or `n/a` when there is no share to give (no such images)."""
    if value is None or interval is None:
        return "n/a"
    low, high = interval
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] n={n}"
