"""Matrix completion speed and agreement on the 16 SD-v1.5 `ff.net.2` shapes.

Builds weight-like matrices (a decaying spectrum plus noise) of the shapes ConceptPrune prunes
(5 of 320x1280, 5 of 640x2560, 6 of 1280x5120), zeroes about 1% of each row at the entries of
largest |w| (as a concept mask would), and completes each layer with the harness's SoftImpute and
with a straightforward numpy SoftImpute (full SVD every iteration, the same lambda and tolerance).
Prints one row per layer and the totals: seconds, ratio, objective difference, sign agreement.

    python benchmarks/revival_speed.py [--device cuda] [--skip-reference] [--layers N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from harness.attack.completion import soft_impute, top_singular_value
from harness.recipe import CompletionSettings

SD_FFN_SHAPES = [(320, 1280)] * 5 + [(640, 2560)] * 5 + [(1280, 5120)] * 6


def weight_like(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A matrix with a power-law spectrum plus isotropic noise, scaled like SD's FFN weights."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen))
    spectrum = torch.arange(1, rows + 1, dtype=torch.float32) ** -0.7
    structured = (u * spectrum) @ v.T
    noise = torch.randn(rows, cols, generator=gen) * spectrum[rows // 4] / cols**0.5
    matrix = structured + noise
    return matrix * (0.02 / matrix.std())


def concept_mask(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """True at the `fraction` largest |w| of every row."""
    count = max(1, int(fraction * weight.shape[1]))
    mask = torch.zeros_like(weight, dtype=torch.bool)
    return mask.scatter_(1, weight.abs().topk(count, dim=1).indices, True)


def numpy_soft_impute(known: np.ndarray, observed: np.ndarray, lam: float, tol: float, max_iters: int) -> tuple[np.ndarray, int]:
    """The plain algorithm: zero start, full SVD and soft threshold every iteration, fixed lambda."""
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


def objective(known: np.ndarray, observed: np.ndarray, m: np.ndarray, lam: float) -> float:
    return 0.5 * float(np.sum(((known - m) * observed) ** 2)) + lam * float(np.linalg.svd(m, compute_uv=False).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fraction", type=float, default=0.01, help="pruned share of each row")
    parser.add_argument("--layers", type=int, default=len(SD_FFN_SHAPES), help="first N of the 16 shapes")
    parser.add_argument("--skip-reference", action="store_true", help="time the harness only")
    args = parser.parse_args()
    settings = CompletionSettings()
    device = torch.device(args.device)
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, torch {torch.__version__}")
    print(f"# settings: lambda = {settings.lambda_ratio} * s1, tol {settings.tol}, path steps {settings.path_steps}, "
          f"{settings.dtype}; reference: numpy float64 full SVD per iteration, fixed lambda, same tol")
    header = f"{'layer':>5} {'shape':>10} {'pruned':>7} {'harness s':>9} {'iters':>5} {'rank':>5} " \
             f"{'numpy s':>8} {'iters':>5} {'ratio':>6} {'obj rel diff':>12} {'sign agree':>10}"
    print(header)
    totals = {"harness": 0.0, "reference": 0.0}
    worst_objective = 0.0
    for index, (rows, cols) in enumerate(SD_FFN_SHAPES[: args.layers]):
        weight = weight_like(rows, cols, seed=index)
        pruned = concept_mask(weight, args.fraction)
        known = torch.where(pruned, 0.0, weight)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = soft_impute(known.to(device), (~pruned).to(device), settings)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ours_seconds = time.perf_counter() - start
        totals["harness"] += ours_seconds
        row = f"{index:>5} {rows:>4}x{cols:<5} {int(pruned.sum()):>7} {ours_seconds:>9.2f} {result.iterations:>5} {result.rank:>5} "
        if args.skip_reference:
            print(row)
            continue
        k_np, obs_np = known.double().numpy(), (~pruned).numpy()
        lam = settings.lambda_ratio * top_singular_value(known.double())
        start = time.perf_counter()
        reference, iterations = numpy_soft_impute(k_np, obs_np, lam, settings.tol, settings.max_iters)
        ref_seconds = time.perf_counter() - start
        totals["reference"] += ref_seconds
        ours = result.matrix.double().cpu().numpy()
        ours_full = np.where(obs_np, ours, ours)
        ref_objective = objective(k_np, obs_np, reference, lam)
        our_objective = objective(k_np, obs_np, ours_full, lam)
        relative = abs(our_objective - ref_objective) / ref_objective
        worst_objective = max(worst_objective, relative)
        agree = float(np.mean(np.sign(ours[~obs_np]) == np.sign(reference[~obs_np])))
        print(row + f"{ref_seconds:>8.2f} {iterations:>5} {ref_seconds / ours_seconds:>6.1f} {relative:>12.2e} {agree:>10.4f}")
    print(f"total harness {totals['harness']:.1f} s" + (
        "" if args.skip_reference else
        f", numpy reference {totals['reference']:.1f} s, ratio {totals['reference'] / totals['harness']:.1f}x, "
        f"worst objective difference {worst_objective:.2e}"))


if __name__ == "__main__":
    main()
