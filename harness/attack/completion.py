"""Matrix completion of a weight matrix whose pruned entries are missing.

`soft_impute` solves the paper's Eq. 1, min 1/2 ||P_Omega(X - M)||^2 + lambda ||M||_*, by
SoftImpute (Mazumder, Hastie, Tibshirani 2010): Z = P_Omega(X) + P_Omega^c(M), M = S_lambda(Z),
with warm starts along a decreasing lambda path. The soft-thresholded SVD is exact and never
forms V: from the short side's Gram matrix Z Z^T = U diag(s^2) U^T,
S_lambda(Z) = U diag(max(0, 1 - lambda / s)) U^T Z.

`reference_code_impute` behaves like the authors' published code (PROTOCOL.md 2.2): float64
full SVD, missing entries started at their column's mean, threshold = the current smallest
singular value, convergence against the iterate from two steps back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.attack.settings import CompletionSettings

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class CompletionResult:
    """The completed matrix and how it was reached."""

    matrix: torch.Tensor
    iterations: int
    rank: int
    lam: float
    objective: float
    converged: bool


def soft_threshold(z: torch.Tensor, lam: float, max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S_lambda(z) and the thresholded singular values, via the Gram matrix of the short side."""
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


def top_singular_value(x: torch.Tensor) -> float:
    """Largest singular value of x (the scale of the lambda path)."""
    short = x if x.shape[0] <= x.shape[1] else x.T
    return float(torch.linalg.eigvalsh(short @ short.T)[-1].clamp(min=0).sqrt())


def objective(x: torch.Tensor, observed: torch.Tensor, m: torch.Tensor, lam: float, nuclear: float) -> float:
    """1/2 ||P_Omega(X - M)||_F^2 + lambda ||M||_*."""
    residual = torch.where(observed, x - m, torch.zeros((), dtype=x.dtype, device=x.device))
    return 0.5 * float(residual.pow(2).sum()) + lam * nuclear


def lambda_path(s1: float, ratio: float, steps: int) -> list[float]:
    """Geometric path from s1 down to ratio * s1 in `steps` stages (the first below s1)."""
    return [s1 * ratio ** ((k + 1) / steps) for k in range(steps)]


def soft_impute(x: torch.Tensor, observed: torch.Tensor, settings: CompletionSettings) -> CompletionResult:
    """SoftImpute with warm starts; stops a stage when the imputed entries change by < tol (relative)."""
    dtype = DTYPES[settings.dtype]
    x = x.to(dtype)
    missing = ~observed
    filled = torch.where(observed, x, torch.zeros((), dtype=dtype, device=x.device))
    s1 = top_singular_value(filled)
    lambdas = lambda_path(s1, settings.lambda_ratio, settings.path_steps)
    imputed = torch.zeros(int(missing.sum()), dtype=dtype, device=x.device)
    iterations, converged = 0, False
    m, nuclear_parts = filled, torch.zeros(0)
    for lam in lambdas:
        converged = False
        for _ in range(settings.max_iters):
            z = filled.masked_scatter(missing, imputed) if imputed.numel() else filled
            m, nuclear_parts = soft_threshold(z, lam, settings.max_rank)
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
    )


def reference_code_impute(
    x: torch.Tensor, observed: torch.Tensor, max_iters: int = 500, tol: float = 1e-5
) -> CompletionResult:
    """The authors' shipped completion (near full-rank hard impute), for reproducing their numbers."""
    x = x.to(torch.float64)
    counts = observed.sum(dim=0).clamp(min=1)
    column_mean = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=0) / counts
    z = torch.where(observed, x, column_mean.expand_as(x))
    history: list[torch.Tensor] = [z]
    converged, iterations, rank, lam = False, 0, 0, 0.0
    m = z
    for iterations in range(1, max_iters + 1):
        u, s, vh = torch.linalg.svd(z, full_matrices=False)
        lam = float(s.min())
        shrunk = (s - lam).clamp(min=0)
        rank = int((shrunk > 0).sum())
        m = (u * shrunk) @ vh
        z = torch.where(observed, x, m)
        history.append(z)
        if len(history) >= 3:
            before = history[-3]
            if float((z - before).norm()) / max(float(before.norm()), 1e-30) < tol:
                converged = True
                break
        history = history[-2:]
    nuclear = float(torch.linalg.svdvals(m).sum())
    return CompletionResult(
        matrix=z,
        iterations=iterations,
        rank=rank,
        lam=lam,
        objective=objective(x, observed, m, lam, nuclear) if math.isfinite(nuclear) else float("nan"),
        converged=converged,
    )
