"""Finding Gaussian-obfuscated weights in the miniature world (issue 15).

The recipe's model (default digits-conceptprune-seven-defense: ConceptPrune erases the digit
seven, then the Gaussian defense) is unlearned once per sigma_M, sigma_M^2 in 1e-6 .. 1e-1 (the
recipe's defense with only sigma changed; `harness.unlearn.run.run_unlearning`, which records the
true mask in the method's mask.safetensors). Per sigma_M: the ROC AUC against the true mask, over
all target layers pooled (and the mean over layers), of the detectors of `harness.attack.revival.detect`
(eq7, lowrank, columns) and of the naive score -|w|; then the recipe-style NMS revival
(`harness.attack.run.run_attack`, top_k 0.6) with each detector's mask (its own share estimate)
and with the naive guess |w| <= sigma_M, and the seven's accuracy after the attack (share of
`digits-seven-N` images the world's classifier calls a seven, n and 95% Wilson interval) and the
other digits' (share of the other digits' images of `digits-all-M` classified as their digit).

    python benchmarks/detectors.py [--seven 30] [--per-digit 10] [--sigmas 1e-6 1e-4 ...]
                                   [--out runs/detectors] [--threads 1]

(`--sigmas` takes sigma_M^2 values, as the tables' first column; `--sigma-squared` is the same option.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.attack.job import AttackJob
from harness.attack.revival import detect
from harness.attack.run import run as run_attack
from harness.generate.suites import load_suite
from harness.layout import AttackFiles, UnlearnFiles
from harness.models.pipelines import apply_tensors, load_pipeline
from harness.recipe import Recipe, load_recipe
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.settings.unlearn import DefenseSettings
from harness.stats import format_share, wilson_interval
from harness.unlearn.detectability import modified_share
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning
from harness.worlds.digits.classifier import load_classifier
from harness.worlds.digits.data import DIGIT_NAMES
from harness.worlds.digits.store import ensure_world

SIGMA_SQUARED = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
DETECTORS = {"eq7": detect.eq7, "lowrank": detect.lowrank, "columns": detect.columns, "naive": detect.magnitude}
"""Scored per sigma_M; each but naive (|w| <= sigma_M) revives with its own mask and share."""
ATTACKS = tuple(DETECTORS)


@torch.no_grad()
def classify(pipeline, classifier, recipe: Recipe, records: list, batch_size: int) -> list[bool]:
    """Per record, whether the classifier calls its image the record's digit."""
    hits: list[bool] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = pipeline([r.prompt for r in chunk], num_inference_steps=recipe.generation.steps,
                          guidance_scale=recipe.generation.guidance,
                          generator=[torch.Generator().manual_seed(r.seed) for r in chunk], output_type="pt").images
        predicted = classifier(images.cpu()).argmax(1).tolist()
        hits += [p == DIGIT_NAMES.index(r.label) for p, r in zip(predicted, chunk)]
    return hits


def accuracy(pipeline, classifier, recipe: Recipe, tensors: dict, suites: dict, batch_size: int,
             sides: tuple[str, ...] = ("seven", "others")) -> dict[str, tuple[int, int]]:
    """(hits, n) per side with `tensors` in the UNet (put back after)."""
    params = dict(pipeline.unet.named_parameters())
    original = {n: params[n].detach().clone() for n in tensors}
    apply_tensors(pipeline, tensors)
    try:
        result = {}
        for side in sides:
            hits = classify(pipeline, classifier, recipe, suites[side], batch_size)
            result[side] = (sum(hits), len(hits))
        return result
    finally:
        apply_tensors(pipeline, original)


def share(counts: tuple[int, int] | None) -> str:
    """'0.800 [0.63, 0.90] n=30'."""
    if counts is None:
        return "-"
    hits, n = counts
    return format_share(hits / n if n else None, n, wilson_interval(hits, n), digits=2)


def revive(recipe: Recipe, unlearned: UnlearnFiles, mask: dict, out: Path, threads: int) -> dict:
    """The recipe-style NMS attack (top_k 0.6) with `mask` settings; the revived tensors."""
    params = {"layers": list(recipe.methods[0].layers), "top_k": 0.6, "mask": mask}
    run_attack(AttackJob(attack="nms", params=resolve("attack", "nms").parse(params), model=recipe.model,
                         unlearned_files=[unlearned.tensors], out=out, original=recipe.model,
                         runtime=RuntimeSettings(device="cpu")))
    torch.set_num_threads(threads)  # the attack sets its own
    return load_file(str(AttackFiles(out).tensors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="digits-conceptprune-seven-defense", help="recipe file or shipped name")
    parser.add_argument("--seven", type=int, default=30, help="prompts of digits-seven-N")
    parser.add_argument("--per-digit", type=int, default=10, help="prompts per other digit (digits-all-M)")
    parser.add_argument("--sigmas", "--sigma-squared", dest="sigma_squared", type=float, nargs="+",
                        default=SIGMA_SQUARED, help="sigma_M^2 values of the defense, one row each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/detectors"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"torch threads {args.threads}; load average {os.getloadavg()[0]:.2f}")

    recipe = load_recipe(args.recipe)
    method = recipe.methods[0]
    world = ensure_world()
    classifier = load_classifier(world).eval()
    pipeline = load_pipeline(recipe.model)
    suites = {"seven": list(load_suite(f"digits-seven-{args.seven}").records),
              "others": [r for r in load_suite(f"digits-all-{args.per_digit}").records if r.label != "seven"]}
    pretrained = accuracy(pipeline, classifier, recipe, {}, suites, args.batch_size)
    print(f"pretrained: seven {share(pretrained['seven'])}, others {share(pretrained['others'])}")

    rows = []
    for variance in args.sigma_squared:
        sigma = variance ** 0.5
        defense = dataclasses.replace(method.defense or DefenseSettings(sigma=sigma), sigma=sigma)
        defended = dataclasses.replace(recipe, methods=[dataclasses.replace(method, defense=defense)])
        files = UnlearnFiles(args.out / f"unlearn-{variance:.0e}")
        run_unlearning(UnlearnJob.from_recipe(defended, None, files.folder, RuntimeSettings(device="cpu")))
        tensors = load_file(str(files.tensors))
        truth = {n: m.bool() for n, m in load_file(str(files.mask)).items()}
        row: dict = {"variance": variance, "sigma": sigma, "alpha": modified_share(truth)}
        for name, score in DETECTORS.items():
            per_layer = {n: score(tensors[n]) for n in truth}
            row[f"auc_{name}"] = detect.auroc(torch.cat([s.flatten() for s in per_layer.values()]),
                                              torch.cat([truth[n].flatten() for n in truth]))
            row[f"auc_layers_{name}"] = sum(detect.auroc(per_layer[n], truth[n]) for n in truth) / len(truth)
        row["none"] = accuracy(pipeline, classifier, recipe, tensors, suites, args.batch_size, ("seven",))
        masks = {name: {"detector": name} for name in ATTACKS if name != "naive"} | {"naive": {"threshold": sigma}}
        for name, mask in masks.items():
            out = args.out / f"revive-{variance:.0e}-{name}"
            revived = revive(recipe, files, mask, out, args.threads)
            layers = json.loads(AttackFiles(out).record.read_text())["revival"]["layers"]
            marked = sum(layer["pruned"] for layer in layers)
            chosen = {n: detect.detected_mask(tensors[n], mask["detector"]) if "detector" in mask
                      else tensors[n].abs() <= sigma for n in truth}
            hit = sum(int((chosen[n] & truth[n]).sum()) for n in truth)
            total = sum(int(truth[n].sum()) for n in truth)
            row[f"mask_{name}"] = (marked, hit / max(1, marked), hit / total)
            row[name] = accuracy(pipeline, classifier, recipe, revived, suites, args.batch_size)
        rows.append(row)
        print(f"sigma_M^2 {variance:.0e} done ({time.time() - started:.0f} s)", flush=True)

    print(f"\nalpha (true share) = {rows[0]['alpha']:.4f}; pretrained seven {share(pretrained['seven'])}, "
          f"others {share(pretrained['others'])}\n")
    print("## ROC AUC against the true mask (all target layers pooled; mean over layers in parentheses)\n")
    print("| sigma_M^2 | sigma_M | eq7 | lowrank | columns | naive -abs(w) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[f'auc_{n}']:.3f} ({r[f'auc_layers_{n}']:.3f})" for n in ATTACKS]
        print(f"| {r['variance']:.0e} | {r['sigma']:.4f} | " + " | ".join(cells) + " |")
    print("\n## Masks used by the revival: entries marked, precision, recall\n")
    print("| sigma_M^2 | eq7 (own share) | lowrank (own share) | columns (own share) | naive abs(w) <= sigma_M |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [f"{m} / {p:.3f} / {c:.3f}" for m, p, c in (r[f"mask_{n}"] for n in ATTACKS)]
        print(f"| {r['variance']:.0e} | " + " | ".join(cells) + " |")
    print(f"\n## Seven's accuracy after the NMS revival (digits-seven-{args.seven}; n, 95% Wilson interval)\n")
    print("| sigma_M^2 | no attack | eq7 mask | lowrank mask | columns mask | naive mask |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variance']:.0e} | {share(r['none']['seven'])} | "
              + " | ".join(share(r[n]["seven"]) for n in ATTACKS) + " |")
    print(f"\n## Other digits' accuracy after the revival (digits-all-{args.per_digit} without the sevens)\n")
    print("| sigma_M^2 | eq7 mask | lowrank mask | columns mask | naive mask |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variance']:.0e} | " + " | ".join(share(r[n]["others"]) for n in ATTACKS) + " |")
    print(f"\n{time.time() - started:.0f} s wall, {args.threads} torch thread(s)")


if __name__ == "__main__":
    main()
