"""Several digits erased at once (issue 15): ConceptPrune with a list of targets unites the
per-target masks; the revival attack (NMS, top 60% of signs) then tries to bring them back.

For each target set (`--sets`, default "seven three" and "seven three five") one recipe runs
through `harness benchmark` (a subprocess, one torch thread): the pretrained model, the unlearned
one and the revived one sample `digits-all-N` (`--per-digit` prompts per digit, the suite's
seeds) and the world's classifier scores them. Printed per set and model: each erased digit's
accuracy, the other digits' pooled accuracy (the damage), each with n and a 95% Wilson interval,
and the share of the target layers pruned.

    python benchmarks/multi_target.py [--sets "seven three" "seven three five"] [--per-digit 10]
        [--out runs/multi-target]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

RECIPE = {
    "model": "zoo:digits",
    "methods": [{"method": "conceptprune", "layers": ["*transformer_blocks.0.ff.net.2.weight"],
                 "params": {"skill_ratio": 0.05, "tau": 5, "seed": 0}}],
    "attacks": [{"attack": "nms", "params": {"top_k": 0.6}}],
    "generation": {"steps": 25, "guidance": 3.0, "scheduler": None, "dtype": "float32", "batch_size": 64,
                   "shard_size": 100},
}


def share(value: dict) -> str:
    """'0.950 [0.83, 0.99] n=20' from a {accuracy, n, ci} record."""
    low, high = value["ci"]
    return f"{value['accuracy']:.3f} [{low:.2f}, {high:.2f}] n={value['n']}"


def run_set(targets: list[str], per_digit: int, out: Path, threads: int) -> None:
    """One target set through the harness; prints its rows."""
    name = "multi-" + "-".join(targets)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"name": name, **RECIPE, "concept": {"target": targets, "kind": "digit"},
              "suites": [f"digits-all-{per_digit}"]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "benchmark", str(folder / "recipe.yaml"), "--run-dir",
                    str(folder / "run"), "--device", "cpu", "--accelerator", "cpu"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    results = json.loads((folder / "run" / "results.json").read_text())
    unlearned = json.loads((folder / "run" / "unlearn" / "conceptprune" / "unlearn.json").read_text())
    for row in results["rows"]:
        low, high = row["preserved_ci"]
        others = f"{row['preserved_accuracy']:.3f} [{low:.2f}, {high:.2f}] n={row['n_preserved']}"
        each = " | ".join(share(row["metrics"]["erased_per_concept"][t]) for t in targets)
        pruned = f"{unlearned['fraction_of_layers']:.4f}" if row["method"] != "pretrained" else "-"
        print(f"| {' + '.join(targets)} | {row['method']}/{row['attack']} | {each} | {others} | {pruned} |")
    print(f"<!-- {name}: {wall:.0f} s wall -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["seven three", "seven three five"],
                        help="target sets, each a quoted space-separated list of digits")
    parser.add_argument("--per-digit", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/multi-target"))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
          f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f}")
    for targets in (s.split() for s in args.sets):
        print("\n| targets | model | " + " | ".join(f"'{t}' accuracy" for t in targets)
              + " | other digits | pruned share |")
        print("|---|---|" + "---|" * len(targets) + "---|---|")
        run_set(targets, args.per_digit, args.out, args.threads)


if __name__ == "__main__":
    main()
