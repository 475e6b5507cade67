"""Revival without knowing the concept, in the miniature world: for every pruning method and every
target digit erased in turn, rank the ten digits as candidate concepts from the unlearned model
alone (harness.infer.ranking) and count how often the erased digit comes first (top-1) or among
the first three (top-3), per scoring rule, with n and a 95% Wilson interval.

Each run is the method's world recipe unchanged except for `concept.target` (ConceptPrune:
digits-conceptprune-seven; saliency: digits-saliency-seven; P-ESD: the p-esd entry of
digits-learned-masks, whose `steps` --pesd-steps may lower: it is the slow one, ~60-90 s per digit
on a CPU), unlearned with `harness.unlearn.run.run_unlearning` into --work (reused on rerun). The
candidates are the suite digits-all-N (N = --per-candidate prompts per digit, the suite's seeds);
norms come from the first --calls UNet calls of the recipe's sampling on the unlearned model. The
attacker reads only the unlearned tensors (exact zeros) and the base model, never the record's
concept.

    python benchmarks/infer_concept.py [--methods conceptprune saliency p-esd] [--targets zero one ...]
        [--per-candidate 10] [--calls 10] [--pesd-steps 100] [--work runs/infer-concept] [--out FILE.json]

With --out, runs already in that file with the same settings are reused (a rerun resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from harness.infer.ranking import RULES, candidate_norms, load_candidates, pruned_layers, rank
from harness.layout import UnlearnFiles
from harness.models.checkpoints import load_tensor_file
from harness.models.pipelines import apply_tensors, load_pipeline, set_scheduler
from harness.provenance import provenance, write_json_atomic
from harness.recipe import Recipe, load_recipe
from harness.runtime import RuntimeSettings
from harness.stats import format_share, wilson_interval
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning
from harness.worlds.digits.data import DIGIT_NAMES

METHODS = {"conceptprune": ("digits-conceptprune-seven", "conceptprune"),
           "saliency": ("digits-saliency-seven", "saliency"),
           "p-esd": ("digits-learned-masks", "p-esd")}
"""Method -> (world recipe, the recipe's method entry name)."""


def method_recipe(method: str, target: str, pesd_steps: int | None) -> Recipe:
    """The method's world recipe with only its entry, erasing `target`."""
    recipe_name, entry_name = METHODS[method]
    recipe = load_recipe(recipe_name)
    _, entry = recipe.method(entry_name)
    if method == "p-esd" and pesd_steps is not None:
        entry = dataclasses.replace(entry, params={**entry.params, "steps": pesd_steps})
    assert recipe.concept is not None
    return dataclasses.replace(recipe, methods=[entry], concept=dataclasses.replace(recipe.concept, target=target))


def run_key(method: str, target: str, args: argparse.Namespace) -> str:
    """What one run's ranks depend on: a rerun with the same key reuses them from --out."""
    steps = f"/steps={args.pesd_steps}" if method == "p-esd" and args.pesd_steps is not None else ""
    return f"{method}{steps}/{target}/per={args.per_candidate}/calls={args.calls}"


def previous_runs(out: str | None) -> dict[str, dict]:
    """The runs an earlier invocation wrote to `out`, by key (none when it is absent or unreadable)."""
    if not out or not Path(out).is_file():
        return {}
    try:
        data = json.loads(Path(out).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {run["key"]: run for run in data.get("runs", []) if "key" in run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--targets", nargs="+", default=list(DIGIT_NAMES), choices=list(DIGIT_NAMES))
    parser.add_argument("--per-candidate", type=int, default=10, help="prompts per candidate digit")
    parser.add_argument("--calls", type=int, default=10, help="UNet calls whose input norms are collected")
    parser.add_argument("--pesd-steps", type=int, default=None, help="P-ESD training steps (default: the recipe's 100)")
    parser.add_argument("--work", default="runs/infer-concept", help="folder of the unlearned models (reused)")
    parser.add_argument("--out", default=None, help="JSON file for every run's ranks")
    args = parser.parse_args()
    torch.set_num_threads(1)

    candidates = load_candidates(f"digits-all-{args.per_candidate}")
    names = [c.name for c in candidates]
    done = previous_runs(args.out)
    runs: list[dict] = []
    pipeline = None
    for method in args.methods:
        for target in args.targets:
            key = run_key(method, target, args)
            if key in done:
                runs.append(done[key])
                print(f"{method:<12} {target:<6} (from {args.out}) " + "  ".join(f"{r}:{done[key]['ranks'][r]}" for r in RULES))
                continue
            recipe = method_recipe(method, target, args.pesd_steps)
            folder = Path(args.work) / method / target
            start = time.perf_counter()
            run_unlearning(UnlearnJob.from_recipe(recipe, None, folder, RuntimeSettings(device="cpu")))
            unlearn_seconds = time.perf_counter() - start
            if pipeline is None:
                pipeline = load_pipeline(recipe.model, "cpu", dtype=torch.float32)
                set_scheduler(pipeline, recipe.generation.scheduler)
            tensors = load_tensor_file(UnlearnFiles(folder).tensors)
            params = dict(pipeline.unet.named_parameters())
            original = {n: params[n].detach().clone() for n in tensors}
            apply_tensors(pipeline, tensors)
            start = time.perf_counter()
            try:
                layers = pruned_layers(tensors)
                norms = candidate_norms(pipeline, layers, candidates, args.calls, recipe.generation)
            finally:
                apply_tensors(pipeline, original)
            rankings = rank(layers, norms, names)
            infer_seconds = time.perf_counter() - start
            ranks = {rule: rankings[rule].rank_of(target) for rule in RULES}
            runs.append({"key": key, "method": method, "target": target, "ranks": ranks,
                         "top": {r: rankings[r].names[:3] for r in RULES},
                         "pruned": sum(layer.count for layer in layers), "layers": len(layers),
                         "unlearn_seconds": round(unlearn_seconds, 1), "infer_seconds": round(infer_seconds, 1)})
            print(f"{method:<12} {target:<6} pruned {runs[-1]['pruned']:>6} in {len(layers):>2} layers  "
                  + "  ".join(f"{r}:{ranks[r]}" for r in RULES)
                  + f"  ({unlearn_seconds:.0f} s unlearn, {infer_seconds:.0f} s infer)", flush=True)
            if args.out:
                write_json_atomic(args.out, {"args": vars(args), "runs": runs, "provenance": provenance()})

    print()
    print(f"candidates: digits-all-{args.per_candidate} ({len(names)} digits), first {args.calls} UNet calls")
    print(f"| {'method':<12} | {'rule':<10} | {'top-1 [95% CI] n':<24} | {'top-3 [95% CI] n':<24} | mean rank |")
    print(f"|{'-' * 14}|{'-' * 12}|{'-' * 26}|{'-' * 26}|-----------|")
    for method in args.methods:
        rows = [r for r in runs if r["method"] == method]
        for rule in RULES:
            n = len(rows)
            top1 = sum(r["ranks"][rule] == 1 for r in rows)
            top3 = sum(r["ranks"][rule] <= 3 for r in rows)
            mean_rank = sum(r["ranks"][rule] for r in rows) / n
            print(f"| {method:<12} | {rule:<10} | {format_share(top1 / n, n, wilson_interval(top1, n)):<24} | "
                  f"{format_share(top3 / n, n, wilson_interval(top3, n)):<24} | {mean_rank:>9.2f} |")


if __name__ == "__main__":
    main()
