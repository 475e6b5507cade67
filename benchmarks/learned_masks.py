"""Learned pruning masks and the prompt-space attacks in the miniature world (issue 14).

Part 1, erasure per target: the recipe's methods named by `--methods` (default p-esd and p-ac;
undefended, with the recipe's params; `--recipe digits-matrix --methods esd ac dimum` for the
fine-tuning methods) are run for each `--targets` digit with no attack and
sampled on `digits-all-N` (`--per-digit` prompts per digit at the suite's own seeds), scored by
the world's classifier: erased = share of the target's images classified as the target, preserved
= share of the other digits' images classified as their own digit, each with n and a 95% Wilson
interval, beside the pretrained model's. Pass: erased <= 1/4 of pretrained and preserved >= 85%
of pretrained. Also the share of the method's layers it changed and the method's seconds.

Part 2, the matrix: the recipe's whole matrix (`harness benchmark digits-learned-masks`): the
attack success rate (erased accuracy on digits-seven-50: share of the concept's prompts whose
image is the concept) of every method under every attack, with n and 95% intervals, the other
digits' accuracy, and the seconds of every method and attack.

Runs go through `harness benchmark` (a subprocess each, one torch thread unless `--threads`);
outputs that already exist with the same settings are reused (their recorded seconds shown).

    python benchmarks/learned_masks.py [--recipe digits-learned-masks] [--targets seven three five] [--methods p-esd p-ac]
        [--per-digit 20] [--skip-matrix] [--out runs/learned-masks]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from harness.recipe import load_recipe
from harness.resources import find_recipe

RECIPE = "digits-learned-masks"


def run_benchmark(recipe: Path, run_dir: Path, threads: int) -> tuple[dict, float]:
    """`harness benchmark RECIPE` into `run_dir`; its results.json and the wall-clock seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "benchmark", str(recipe), "--run-dir", str(run_dir),
                    "--device", "cpu", "--accelerator", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((run_dir / "results.json").read_text()), time.perf_counter() - started


def share(row: dict, side: str) -> str:
    """'0.950 [0.83, 0.99] n=20' for the erased or preserved side of a results row."""
    value, (low, high), n = row[f"{side}_accuracy"], row[f"{side}_ci"], row[f"n_{side}"]
    return f"{value:.3f} [{low:.2f}, {high:.2f}] n={n}"


def record(run_dir: Path, folder: str, name: str) -> dict:
    """A stage's record (unlearn.json or attack.json) of the run."""
    return json.loads((run_dir / folder / name).read_text())


def erasure(recipe_name: str, targets: list[str], methods: list[str], per_digit: int, out: Path, threads: int) -> None:
    """Part 1: each method per target; see the module docstring."""
    base = yaml.safe_load(find_recipe(recipe_name).read_text())
    chosen = [m for m in base["methods"] if m["method"] in methods and "defense" not in m]
    print(f"\n## Erasure per target (digits-all-{per_digit}; pass: erased <= 1/4 pretrained, preserved >= 85%)\n")
    print("| target | method | erased [95% CI] | preserved [95% CI] | pretrained erased | pretrained preserved "
          "| changed share | seconds | pass |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target in targets:
        recipe = {**base, "name": f"learned-masks-{target}", "concept": {**base["concept"], "target": target},
                  "methods": retarget(chosen, base["concept"]["target"], target), "attacks": [], "suites": [f"digits-all-{per_digit}"]}
        folder = out / f"erase-{target}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        results, _ = run_benchmark(folder / "recipe.yaml", folder / "run", threads)
        rows = {r["method"]: r for r in results["rows"] if r["attack"] == "none"}
        pre = rows["pretrained"]
        for method in (m.get("name") or m["method"] for m in chosen):
            row, unlearned = rows[method], record(folder / "run", f"unlearn/{method}", "unlearn.json")
            passed = (row["erased_accuracy"] <= pre["erased_accuracy"] / 4
                      and row["preserved_accuracy"] >= 0.85 * pre["preserved_accuracy"])
            print(f"| {target} | {method} | {share(row, 'erased')} | {share(row, 'preserved')} | "
                  f"{pre['erased_accuracy']:.3f} | {pre['preserved_accuracy']:.3f} | "
                  f"{unlearned['fraction_of_layers']:.4f} | {unlearned['seconds']:.1f} | {'yes' if passed else 'no'} |")


def retarget(value: Any, old: str, new: str) -> Any:
    """`value` (a recipe's method entries) with the word `old` replaced by `new` in every string
    (a method's own prompts of the concept, such as FMN's, name the erased digit)."""
    if isinstance(value, str):
        return re.sub(rf"\b{re.escape(old)}\b", new, value)
    if isinstance(value, list):
        return [retarget(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: retarget(v, old, new) for k, v in value.items()}
    return value


def print_cells(title: str, by_cell: dict, methods: list[str], attacks: list[str], suite: str, side: str) -> None:
    """One markdown table: a row per method, a column per attack, the `side` share of each cell."""
    print(f"\n## {title}\n")
    print("| method | " + " | ".join(attacks) + " |")
    print("|---|" + "---|" * len(attacks))
    for method in methods:
        cells = []
        for attack in attacks:
            row = by_cell.get((method, attack, suite))
            cells.append(share(row, side) if row and row["status"] == "done" else (row or {}).get("status", "-"))
        print(f"| {method} | " + " | ".join(cells) + " |")


def matrix(recipe_name: str, out: Path, threads: int) -> None:
    """Part 2: the recipe's matrix; see the module docstring."""
    recipe = load_recipe(recipe_name)
    run_dir = out / "matrix"
    results, wall = run_benchmark(find_recipe(recipe_name), run_dir, threads)
    suites = recipe.suites
    attacks = ["none", *(a.name for a in recipe.attacks)]
    by_cell = {(r["method"], r["attack"], r["suite"]): r for r in results["rows"] if r.get("step") is None}
    methods = ["pretrained", *(m.name for m in recipe.methods)]
    print_cells(f"Attack success rate on {suites[0]} (erased accuracy under each attack; n, 95% Wilson interval)",
                by_cell, methods, attacks, suites[0], "erased")
    print_cells(f"Other digits' accuracy on {suites[1]} (preserved accuracy)", by_cell, methods, attacks, suites[1],
                "preserved")
    print("\n## Seconds of each method and attack\n")
    print("| method | unlearn | " + " | ".join(a.name for a in recipe.attacks) + " |")
    print("|---|---|" + "---|" * len(recipe.attacks))
    for method in recipe.methods:
        unlearned = record(run_dir, f"unlearn/{method.name}", "unlearn.json")
        cells = []
        for attack in recipe.attacks:
            attacked = record(run_dir, f"attacks/{method.name}/{attack.name}", "attack.json")
            cells.append(f"{attacked['seconds']:.1f}" if attacked["applicable"] else f"n/a ({attacked['reason']})")
        print(f"| {method.name} | {unlearned['seconds']:.1f} | " + " | ".join(cells) + " |")
    print(f"\nwhole matrix: {wall:.0f} s wall (stages reused from an earlier run count only their check)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=RECIPE, help=f"the recipe whose methods and matrix run (default {RECIPE})")
    parser.add_argument("--targets", nargs="+", default=["seven", "three", "five"])
    parser.add_argument("--methods", nargs="+", default=["p-esd", "p-ac"])
    parser.add_argument("--per-digit", type=int, default=20)
    parser.add_argument("--skip-matrix", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/learned-masks"))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; "
          f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f}")
    erasure(args.recipe, args.targets, args.methods, args.per_digit, args.out, args.threads)
    if not args.skip_matrix:
        matrix(args.recipe, args.out, args.threads)


if __name__ == "__main__":
    main()
