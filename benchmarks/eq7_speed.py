"""The eq7 detector's cost on one SD-v1.5 1280x5120 `ff.net.2` layer, before and after issue 23.

A weight-like matrix N(0, 0.02^2) with 2% of every row replaced by N(0, sigma_M^2) draws
(sigma_M^2 = 1e-6, the Gaussian defense), in one run:

- previous fit: `fit_mixture_reference` (beside this script in eq7_reference.py: float64 EM, the
  two starts one after the other, each iteration forming both log densities per entry);
- torch fit: `harness.attack.revival.detect.fit_mixture` (both starts at once, the E-step one
  affine map and a sigmoid on float32 entries, float64 sums over cache-sized pieces);
- previous mask: what `detected_mask(weight, "eq7")` cost before (two previous fits, one for the
  scores and one for the share estimate, then float64 scores and the sort);
- torch mask: `detected_mask(weight, "eq7")` now (one fit, shared by scores and share);
- revival: `revive_layer` (the NMS attack's completion, Top-K and magnitudes, default settings)
  of the same layer with the torch mask's positions, for the issue's "within 2x the revival's time".

The fitted parameters of the two fits and the two masks' agreement are printed under the table.

    python benchmarks/eq7_speed.py [--threads T] [--device cpu] [--skip-previous] [--skip-revival]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eq7_reference import fit_mixture_reference  # noqa: E402

from harness.attack.revival import detect  # noqa: E402
from harness.attack.revival.layer import LayerJob, revive_layer  # noqa: E402
from harness.attack.revival.settings import RevivalParams  # noqa: E402


def layer(rows: int = 1280, cols: int = 5120, share: float = 0.02, sigma_m: float = 1e-3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen) * 0.02
    columns = torch.rand(rows, cols, generator=gen).argsort(dim=1)[:, : int(share * cols)]
    mask = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, columns, True)
    weight[mask] = torch.randn(int(mask.sum()), generator=gen) * sigma_m
    return weight


def previous_mask(weight: torch.Tensor) -> torch.Tensor:
    """`detected_mask(weight, "eq7")` as it ran before: a fit for the scores, another for the share."""
    scores = detect.eq7(weight, fit_mixture_reference(weight)).flatten()
    share = fit_mixture_reference(weight).alpha
    count = min(scores.numel(), max(1, math.ceil(share * scores.numel())))
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:count]] = True
    return mask.view(weight.shape)


def timed(function, *args):
    if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args)
    if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="device of the torch fit, mask and revival")
    parser.add_argument("--skip-previous", action="store_true", help="time only the torch side")
    parser.add_argument("--skip-revival", action="store_true", help="do not time the revival")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    weight = layer()
    on_device = weight.to(device)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), device {device}, layer {tuple(weight.shape)}")
    rows = []
    fit, seconds = timed(detect.fit_mixture, on_device)
    rows.append(("torch fit", seconds))
    detect._LAST_FIT.clear()
    mask, seconds = timed(detect.detected_mask, on_device, "eq7")
    rows.append(("torch mask (1 fit, scores, sort)", seconds))
    if not args.skip_previous:
        reference, seconds = timed(fit_mixture_reference, weight)
        rows.insert(0, ("previous fit", seconds))
        old_mask, seconds = timed(previous_mask, weight)
        rows.insert(2, ("previous mask (2 fits, scores, sort)", seconds))
    if not args.skip_revival:
        job = LayerJob("ff.net.2", weight, mask.cpu())
        outcome, seconds = timed(revive_layer, job, RevivalParams(), device)
        rows.append((f"revival of the layer ({outcome.report.pruned} positions, {outcome.report.iterations} iterations)",
                     seconds))
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.2f}")
    print(f"torch fit:    {fit}")
    if not args.skip_previous:
        print(f"previous fit: {reference}")
        print(f"relative differences: alpha {abs(fit.alpha / reference.alpha - 1):.1e}, sigma_m "
              f"{abs(fit.sigma_m / reference.sigma_m - 1):.1e}, sigma_u {abs(fit.sigma_u / reference.sigma_u - 1):.1e}; "
              f"masks: {int(mask.sum())} and {int(old_mask.sum())} entries, {int((mask.cpu() != old_mask).sum())} differ")


if __name__ == "__main__":
    main()
