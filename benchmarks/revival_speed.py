"""Matrix completion speed and agreement on the 16 SD-v1.5 `ff.net.2` shapes.

Builds weight-like matrices of the shapes ConceptPrune prunes (5 of 320x1280, 5 of 640x2560,
6 of 1280x5120), zeroes about 1% of each row at the entries of largest |w| (as a concept mask
would), and completes each layer three ways, in one run:

- harness: `soft_impute` (accelerated SoftImpute, Gram-matrix threshold, sparse updates),
- previous: `soft_impute_plain` (the harness's previous algorithm: plain iterations; kept beside
  this script in plain_soft_impute.py),
- reference: numpy float64, full SVD and soft threshold every iteration at the fixed final
  lambda from a zero start (fancyimpute's SoftImpute algorithm with max_rank unset).

Two families of matrices:

- power-law: singular values i^-0.7 plus isotropic noise (easier than real weights);
- real-spectrum: the flatter spectrum of a pretrained FFN weight (s1 / s_median 5.3, power-law
  fit about -0.36, like all-MiniLM-L6-v2 layer 0 `output.dense`): a Marchenko-Pastur bulk
  (aspect 1/4) plus a head 5.97 i^-0.49 on 384 values, interpolated to the layer's short side,
  with random singular vectors and no noise.

Every method's returned matrix M is judged in float64 at the reference's lambda: the objective
1/2 ||P_Omega(X - M)||^2 + lambda ||M||_* (nuclear norm from the singular values of M), the
fixed-point residual ||M - S_lambda(P_Omega X + P_Omega^c M)|| / ||M||, and the sign agreement
with the reference and with a near-exact "tight" solution (the harness in float64 at tol
1e-10, untimed) on the pruned entries. Seconds are wall time of the completion call only.

    python benchmarks/revival_speed.py [--family power-law|real-spectrum|both] [--layers N]
        [--start K] [--skip-reference] [--skip-previous] [--skip-tight] [--threads T]
        [--device cuda] [--tol 1e-4] [--dtype float32] [--reference-tol TOL]
        [--reference-max-iters N] [--batch] [--warmup]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from plain_soft_impute import soft_impute_plain  # beside this script (sys.path[0])
from threadpoolctl import threadpool_limits

from harness.attack.revival.completion import (
    fixed_point_residual,
    soft_impute,
    soft_impute_batch,
    top_singular_value,
)
from harness.attack.revival.settings import CompletionSettings

SD_FFN_SHAPES = [(320, 1280)] * 5 + [(640, 2560)] * 5 + [(1280, 5120)] * 6
FAMILIES = ("power-law", "real-spectrum")
TARGET_SECONDS = {"power-law": 30.0, "real-spectrum": 45.0}
"""Issue 17's targets for all 16 layers on the 2-core CPU with nothing else running."""


def power_law_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A matrix with a power-law spectrum i^-0.7 plus isotropic noise, scaled like SD's FFN weights."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen))
    spectrum = torch.arange(1, rows + 1, dtype=torch.float32) ** -0.7
    structured = (u * spectrum) @ v.T
    noise = torch.randn(rows, cols, generator=gen) * spectrum[rows // 4] / cols**0.5
    matrix = structured + noise
    return matrix * (0.02 / matrix.std())


def marchenko_pastur_singular_values(count: int, aspect: float) -> np.ndarray:
    """Mid-quantiles (descending) of the singular values of a unit-variance Gaussian matrix with
    short/long side ratio `aspect`, normalised by sqrt(long side)."""
    low, high = (1 - aspect**0.5) ** 2, (1 + aspect**0.5) ** 2
    grid = np.linspace(low, high, 20001)
    density = np.sqrt(np.maximum((high - grid) * (grid - low), 0)) / (2 * np.pi * aspect * grid)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    quantiles = 1 - (np.arange(1, count + 1) - 0.5) / count
    return np.sqrt(np.interp(quantiles, cdf, grid))


def real_spectrum(rows: int) -> np.ndarray:
    """A pretrained-FFN-like spectrum: on 384 values, an MP bulk (aspect 1/4) plus 5.97 i^-0.49
    (s1 / s_median 5.30, log-log fit -0.356), linearly interpolated to `rows` values."""
    index = np.arange(1, 385)
    base = marchenko_pastur_singular_values(384, 0.25) + 5.97 * index**-0.49
    return np.interp(np.linspace(1, 384, rows), index, base)


def real_spectrum_weight(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Random singular vectors around `real_spectrum`, scaled like SD's FFN weights."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen, dtype=torch.float64))
    spectrum = torch.from_numpy(real_spectrum(rows))
    matrix = ((u * spectrum) @ v.T).float()
    return matrix * (0.02 / matrix.std())


def weight_like(family: str, rows: int, cols: int, seed: int) -> torch.Tensor:
    return power_law_weight(rows, cols, seed) if family == "power-law" else real_spectrum_weight(rows, cols, seed)


def concept_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """True at the `fraction` largest |w| of every row."""
    count = max(1, int(fraction * weight.shape[1]))
    mask = torch.zeros_like(weight, dtype=torch.bool)
    return mask.scatter_(1, weight.abs().topk(count, dim=1).indices, True)


def numpy_soft_impute(known: np.ndarray, observed: np.ndarray, lam: float, tol: float, max_iters: int) -> tuple[np.ndarray, int]:
    """fancyimpute's algorithm: zero start, full SVD and soft threshold every iteration, fixed
    lambda; stops when the missing entries change by < tol relative to their old norm."""
    m = np.zeros_like(known)
    for iteration in range(1, max_iters + 1):
        z = np.where(observed, known, m)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        new = (u * np.maximum(s - lam, 0)) @ vt
        change = np.linalg.norm((new - m)[~observed]) / max(np.linalg.norm(m[~observed]), 1e-30)
        m = new
        if change < tol:
            return m, iteration
    return m, max_iters


def judge(known: np.ndarray, observed: np.ndarray, m: np.ndarray, lam: float) -> tuple[float, float]:
    """Objective (float64, nuclear norm from the singular values) and fixed-point residual."""
    nuclear = float(np.linalg.svd(m, compute_uv=False).sum())
    value = 0.5 * float(np.sum(((known - m) * observed) ** 2)) + lam * nuclear
    residual = fixed_point_residual(torch.from_numpy(known), torch.from_numpy(observed), torch.from_numpy(m), lam)
    return value, residual


def timed(device: torch.device, call):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


METHODS = ("harness", "previous", "reference", "tight")


def run_family(family: str, args: argparse.Namespace, settings: CompletionSettings, device: torch.device) -> dict:
    shapes = list(enumerate(SD_FFN_SHAPES))[args.start: args.start + args.layers]
    print(f"\n## family {family}: {len(shapes)} layers")
    print(f"{'layer':>5} {'shape':>10} {'pruned':>6} {'method':>9} {'seconds':>8} {'iters':>5} {'rank':>5} "
          f"{'objective':>17} {'rel to ref':>10} {'rel to tight':>12} {'residual':>9} {'signs ref':>9} {'signs tight':>11}")
    layers = []
    for index, (rows, cols) in shapes:
        weight = weight_like(family, rows, cols, seed=index)
        pruned = concept_mask(weight, args.fraction)
        layers.append((index, rows, cols, torch.where(pruned, 0.0, weight), pruned))
    if args.warmup:  # each shape once, untimed (with --batch, each same-shaped group): a GPU loads its
        by_shape = defaultdict(list)  # libraries and picks its kernels on the first calls
        for item in layers:
            by_shape[(item[1], item[2])].append(item)
        for group in by_shape.values():
            if args.batch:
                soft_impute_batch([g[3].to(device) for g in group], [(~g[4]).to(device) for g in group], settings)
            else:
                soft_impute(group[0][3].to(device), (~group[0][4]).to(device), settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    batched: dict[int, tuple] = {}
    if args.batch:  # same-shaped layers completed together; their seconds shared out evenly
        groups = defaultdict(list)
        for item in layers:
            groups[(item[1], item[2])].append(item)
        for group in groups.values():
            results, seconds = timed(device, lambda group=group: soft_impute_batch(
                [g[3].to(device) for g in group], [(~g[4]).to(device) for g in group], settings))
            for item, result in zip(group, results):
                batched[item[0]] = (result, seconds / len(group))
    totals: dict[str, float] = defaultdict(float)
    worst: dict[str, float] = defaultdict(float)
    lowest: dict[str, float] = defaultdict(lambda: 1.0)
    for index, rows, cols, known, pruned in layers:
        observed = ~pruned
        k64, o64 = known.double().numpy(), observed.numpy()
        lam = settings.lambda_ratio * top_singular_value(known.double())
        runs: dict[str, tuple[np.ndarray, float | None, int | str, int | str, str]] = {}
        result, seconds = batched.get(index) or timed(
            device, lambda known=known, observed=observed: soft_impute(known.to(device), observed.to(device), settings))
        runs["harness"] = (result.matrix.double().cpu().numpy(), seconds, result.iterations, result.rank,
                           f"{result.dtype_used}" + (f"; {'; '.join(result.notes)}" if result.notes else ""))
        if not args.skip_previous:
            previous, seconds = timed(device, lambda known=known, observed=observed: soft_impute_plain(
                known.to(device), observed.to(device), settings, residual=False))
            runs["previous"] = (previous.matrix.double().cpu().numpy(), seconds, previous.iterations, previous.rank, "")
        if not args.skip_reference:
            with threadpool_limits(args.threads):
                (reference, iterations), seconds = timed(torch.device("cpu"), lambda k64=k64, o64=o64, lam=lam: numpy_soft_impute(
                    k64, o64, lam, args.reference_tol or settings.tol, args.reference_max_iters or settings.max_iters))
            runs["reference"] = (reference, seconds, iterations, "-", "")
        if not args.skip_tight:
            tight = soft_impute(known.double(), observed, CompletionSettings(
                lambda_ratio=settings.lambda_ratio, path_steps=settings.path_steps, tol=1e-10, max_iters=1000, dtype="float64"))
            runs["tight"] = (tight.matrix.numpy(), None, tight.iterations, tight.rank, "harness, float64, tol 1e-10, not timed")
        with threadpool_limits(args.threads):
            judged = {name: judge(k64, o64, run[0], lam) for name, run in runs.items()}
        missing = ~o64
        for name in METHODS:
            if name not in runs:
                continue
            matrix, seconds, iterations, rank, note = runs[name]
            objective_value, residual = judged[name]
            cells = []
            for other in ("reference", "tight"):
                if other in runs and other != name:
                    relative = (objective_value - judged[other][0]) / abs(judged[other][0])
                    agree = float(np.mean(np.sign(matrix[missing]) == np.sign(runs[other][0][missing])))
                    worst[f"objective {name} vs {other}"] = max(worst[f"objective {name} vs {other}"], abs(relative))
                    lowest[f"{name} vs {other}"] = min(lowest[f"{name} vs {other}"], agree)
                    cells.append((f"{relative:+.2e}", f"{agree:.5f}"))
                else:
                    cells.append(("-", "-"))
            if seconds is not None:
                totals[name] += seconds
            if name == "tight":
                worst.pop("objective tight vs reference", None)
                lowest.pop("tight vs reference", None)
            worst[f"residual {name}"] = max(worst[f"residual {name}"], residual)
            print(f"{index:>5} {rows:>4}x{cols:<5} {int(pruned.sum()):>6} {name:>9} "
                  f"{(f'{seconds:.2f}' if seconds is not None else '-'):>8} {iterations:>5} {rank:>5} "
                  f"{objective_value:>17.10e} {cells[0][0]:>10} {cells[1][0]:>12} {residual:>9.1e} "
                  f"{cells[0][1]:>9} {cells[1][1]:>11}" + (f"  [{note}]" if note else ""), flush=True)
    line = f"total {family}: harness {totals['harness']:.2f} s"
    for name, label in (("previous", "previous algorithm"), ("reference", "numpy reference")):
        if name in totals:
            line += f", {label} {totals[name]:.1f} s ({totals[name] / totals['harness']:.1f}x the harness)"
    print(line)
    objective = (f"{k} {v:.1e}" for k, v in sorted(worst.items()) if k.startswith("objective"))
    print("worst |objective difference|: " + ", ".join(objective))
    print("worst residual: " + ", ".join(f"{k.split()[1]} {v:.1e}" for k, v in sorted(worst.items()) if k.startswith("residual")))
    if lowest:
        print("lowest sign agreement on the pruned entries: " + ", ".join(f"{k} {v:.5f}" for k, v in sorted(lowest.items())))
    if len(shapes) == len(SD_FFN_SHAPES):
        target = 1.0 if device.type == "cuda" else TARGET_SECONDS[family]
        print(f"target {target:g} s for all 16 layers: {'met' if totals['harness'] <= target else 'NOT met'} "
              f"({totals['harness']:.1f} s)")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: torch's)")
    parser.add_argument("--fraction", type=float, default=0.01, help="pruned share of each row")
    parser.add_argument("--layers", type=int, default=len(SD_FFN_SHAPES), help="this many of the 16 shapes")
    parser.add_argument("--start", type=int, default=0, help="first of the 16 shapes (0-4 small, 5-9 medium, 10-15 large)")
    parser.add_argument("--skip-reference", action="store_true", help="no numpy reference (and no agreement)")
    parser.add_argument("--skip-previous", action="store_true", help="no run of the previous harness algorithm")
    parser.add_argument("--tol", type=float, default=None, help="completion tolerance (default: the recipe's)")
    parser.add_argument("--reference-tol", type=float, default=None, help="the reference's tolerance (default: --tol)")
    parser.add_argument("--reference-max-iters", type=int, default=None,
                        help="the reference's iteration cap (default: max_iters)")
    parser.add_argument("--skip-tight", action="store_true",
                        help="no untimed float64 tol-1e-10 harness solution to compare everything with")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="harness dtype (default: the recipe's)")
    parser.add_argument("--batch", action="store_true", help="complete same-shaped layers together (soft_impute_batch)")
    parser.add_argument("--warmup", action="store_true",
                        help="complete each shape once, untimed, before the timed runs (for a GPU's first-call costs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    overrides = {k: v for k, v in (("tol", args.tol), ("dtype", args.dtype)) if v is not None}
    settings = CompletionSettings(**overrides)
    device = torch.device(args.device)
    print(f"# {' '.join(sys.argv)}")
    print(f"# machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}")
    print(f"# settings: lambda = {settings.lambda_ratio} * s1, tol {settings.tol}, path steps {settings.path_steps}, "
          f"max_iters {settings.max_iters}, {settings.dtype}; reference: numpy float64 full SVD per iteration, "
          f"fixed lambda, tol {args.reference_tol or settings.tol}")
    print("# every method's matrix judged in float64 at the reference's lambda: objective, fixed-point residual;")
    print("# 'rel to' = (objective - the other's) / the other's; 'signs' = sign agreement on the pruned entries;")
    print("# tight = the harness in float64 at tol 1e-10 (untimed), a reference-independent near-exact solution")
    for family in (FAMILIES if args.family == "both" else (args.family,)):
        run_family(family, args, settings, device)


if __name__ == "__main__":
    main()
