"""The harness's previous SoftImpute, kept as a reference for `revival_speed.py` and the tests.

Plain iterations, each S_lambda(Z) by the Gram matrix, U^T Z and U (...) (three m x m x n
products), along the same lambda path as `harness.attack.revival.completion.soft_impute`, so
both reach the same convex solution. Not used by the harness itself. The tests load this file by
path (tests/attack/test_completion_accelerated.py); `revival_speed.py` imports it beside itself.
"""

from __future__ import annotations

import math

import torch

from harness.attack.revival.completion import (
    DTYPES,
    CompletionResult,
    fixed_point_residual,
    lambda_path,
    objective,
    top_singular_value,
)
from harness.attack.revival.settings import CompletionSettings


def soft_impute_plain(x: torch.Tensor, observed: torch.Tensor, settings: CompletionSettings,
                      residual: bool = True) -> CompletionResult:
    """The harness's previous SoftImpute: plain iterations, each S_lambda(Z) by the Gram matrix,
    U^T Z and U (...) (three m x m x n products); stops a stage when the imputed entries change
    by < tol (relative)."""
    dtype = DTYPES[settings.dtype]
    x = x.to(dtype)
    missing = ~observed
    filled = torch.where(observed, x, torch.zeros((), dtype=dtype, device=x.device))
    s1 = top_singular_value(filled)
    lambdas = lambda_path(s1, settings.lambda_ratio, settings.path_steps)
    imputed = torch.zeros(int(missing.sum()), dtype=dtype, device=x.device)
    iterations, converged, change = 0, False, math.inf
    m, nuclear_parts = filled, torch.zeros(0)
    for lam in lambdas:
        converged = False
        for _ in range(settings.max_iters):
            z = filled.masked_scatter(missing, imputed) if imputed.numel() else filled
            m, nuclear_parts = soft_threshold_three_products(z, lam, settings.max_rank)
            new_imputed = m[missing]
            iterations += 1
            change = float((new_imputed - imputed).norm()) / max(float(imputed.norm()), 1e-30)
            imputed = new_imputed
            if change < settings.tol:
                converged = True
                break
    lam = lambdas[-1]
    return CompletionResult(
        matrix=m,
        iterations=iterations,
        rank=int(nuclear_parts.numel()),
        lam=lam,
        objective=objective(x, observed, m, lam, float(nuclear_parts.sum())),
        converged=converged,
        residual=fixed_point_residual(x, observed, m, lam, settings.max_rank) if residual else None,
        dtype_used=settings.dtype,
        algorithm="plain",
        change=change,
    )


def soft_threshold_three_products(z: torch.Tensor, lam: float, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous S_lambda: Gram matrix, U^T Z, then U (shrink * U^T Z)."""
    wide = z.shape[0] <= z.shape[1]
    short = z if wide else z.T
    eigenvalues, vectors = torch.linalg.eigh(short @ short.T)
    singular = eigenvalues.clamp(min=0).sqrt()
    keep = singular > lam
    if max_rank is not None and int(keep.sum()) > max_rank:
        keep &= singular >= singular[keep].topk(max_rank).values.min()
    u = vectors[:, keep]
    s = singular[keep]
    shrink = 1.0 - lam / s
    thresholded = (u * shrink) @ (u.T @ short)
    return (thresholded if wide else thresholded.T), s - lam
