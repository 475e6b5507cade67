"""Fine-tuning unlearning and the relearning attack in the miniature world (issue 13).

Runs `harness benchmark digits-finetune` (a subprocess, one torch thread unless `--threads`):
ESD, AC, DiMUM and ConceptPrune erase the digit "seven"; DiMRA relearns on the other nine digits
for 200 steps with a snapshot every 50; NMS revives. Prints, from the run's files:

- per method: the seven's accuracy (digits-seven-50, n=50) and the other digits' (digits-all-5)
  with 95% Wilson intervals, the method's steps and seconds, and the erasure bar (erased <= 1/4
  of pretrained, preserved >= 85% of pretrained);
- per attack on each method: the same accuracies and the attack's seconds;
- DiMRA's recovery curves side by side, with the first step at which the seven is back to half
  of the pretrained accuracy (or "never within N steps").

Outputs that exist with the same settings are reused (their recorded seconds are shown).

    python benchmarks/finetune.py [--out runs/finetune-matrix] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from harness.layout import ModelRef
from harness.report.runs import load_run
from harness.report.table_curves import curves
from harness.stats import format_share

RECIPE = "digits-finetune"


def run_benchmark(run_dir: Path, threads: int) -> float:
    """`harness benchmark digits-finetune` into `run_dir`; the wall-clock seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "benchmark", RECIPE, "--run-dir", str(run_dir),
                    "--device", "cpu", "--accelerator", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-matrix"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
          f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f}")
    wall = run_benchmark(args.out, args.threads)
    run = load_run(args.out)
    erased_suite, preserved_suite = "digits-seven-50", "digits-all-5"
    pretrained_erased = run.row(ModelRef("pretrained"), erased_suite)
    pretrained_kept = run.row(ModelRef("pretrained"), preserved_suite)
    print(f"\n## Erasure and attacks (seven on {erased_suite}, other digits on {preserved_suite})\n")
    print("| method | attack | seven [95% CI] | other digits [95% CI] | steps | seconds | erasure bar |")
    print("|---|---|---|---|---|---|---|")
    for model in [m for m in run.models if m.step is None]:
        erased, kept = run.row(model, erased_suite), run.row(model, preserved_suite)
        if erased is None or erased.status != "done":
            print(f"| {model.method} | {model.attack} | {erased.status if erased else 'missing'} | | | | |")
            continue
        record = run.attacks.get(model) if model.attack != "none" else run.unlearn.get(model.method)
        seconds = f"{record.seconds:.0f}" if record is not None else "-"
        params = record.params if record is not None and isinstance(record.params, dict) else {}
        steps = params.get("steps", "-")
        bar = "-"
        if model.attack == "none" and model.method != "pretrained":
            bar = "yes" if (erased.erased_accuracy <= pretrained_erased.erased_accuracy / 4
                            and kept.preserved_accuracy >= 0.85 * pretrained_kept.preserved_accuracy) else "no"
        print(f"| {model.method} | {model.attack} | {format_share(erased.erased_accuracy, erased.n_erased, erased.erased_ci)} "
              f"| {format_share(kept.preserved_accuracy, kept.n_preserved, kept.preserved_ci)} | {steps} | {seconds} | {bar} |")
    found = curves([run])
    if found:
        steps = sorted({p.step for c in found for p in c.points})
        print("\n## DiMRA recovery curves: the seven's accuracy after each step count (other digits in brackets)\n")
        print("| method | " + " | ".join(f"step {s}" for s in steps) + " | back to half of pretrained |")
        print("|---|" + "---|" * len(steps) + "---|")
        for curve in found:
            by_step = {p.step: p for p in curve.points}
            cells = [f"{by_step[s].erased:.2f} ({by_step[s].preserved:.2f})" if s in by_step and by_step[s].erased is not None
                     and by_step[s].preserved is not None else "-" for s in steps]
            crossing = curve.crossing()
            print(f"| {curve.method} | " + " | ".join(cells) + " | "
                  + (f"step {crossing}" if crossing is not None else f"never within {curve.points[-1].step} steps") + " |")
        print(f"\nn = {found[0].points[-1].n_erased} sevens per point; pretrained seven accuracy "
              f"{pretrained_erased.erased_accuracy:.2f}")
    print(f"\nwhole run: {wall:.0f} s wall (stages reused from an earlier run count only their check)")


if __name__ == "__main__":
    main()
