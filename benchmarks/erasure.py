"""Erasure in the miniature world: ConceptPrune per target digit, the Gaussian-obfuscation
trade-off over sigma_M (paper Fig. 6) and Eq. 7's detectability surface (paper Fig. 7).

For each target digit the world recipe's method runs unchanged except for `concept.target`
(`harness.unlearn.run.run_unlearning`); the model is then sampled on the `digits-all-N` suite
(N prompts per digit, the suite's seeds) and the world's classifier says which digit each image
shows. "Target share" is the share of target-prompt images classified as the target; "others"
is the mean accuracy over the other nine digits. Pass: target share <= 1/4 of the pretrained
one and others >= 85% of pretrained. The defense sweep fills the first target's pruned
positions with N(0, sigma_M^2) draws (sigma_M^2 = 1e-6 .. 1e-1 as in the paper's text) and
reports exact zeros left in the target layers, Eq. 7's p(w) and the measured share of pruned
entries among |w| <= sigma_M, both accuracies, and the target share after the recipe's NMS attack
with the mask an attacker would guess, |w| <= sigma_M (and, once, on the undefended model).

    python benchmarks/erasure.py [--targets seven three one] [--per-digit 20] [--out runs/erasure]
        [--saliency-recipe digits-saliency-seven] [--params '{"skill_ratio": 0.1}']
        [--guidance 1.0] [--zero-layers "*ff.net.2.weight" "*attn2.to_v.weight"] [--no-defense]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.attack.job import AttackJob
from harness.attack.run import run as run_attack
from harness.generate.suites import load_suite
from harness.layout import AttackFiles, UnlearnFiles
from harness.models.checkpoints import save_tensors
from harness.models.layers import select_layers
from harness.models.pipelines import apply_tensors, load_pipeline
from harness.provenance import provenance, write_json_atomic
from harness.recipe import Recipe, load_recipe
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.unlearn.defense import obfuscate
from harness.unlearn.detectability import (
    detectability,
    empirical_detectability,
    exact_zeros,
    modified_share,
    plot_detectability,
    unmodified_sigma,
)
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning
from harness.worlds.digits.classifier import load_classifier
from harness.worlds.digits.data import DIGIT_NAMES
from harness.worlds.digits.store import ensure_world

ROOT = Path(__file__).resolve().parents[1]
SIGMA_SQUARED = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


@torch.no_grad()
def digit_accuracy(pipeline, classifier, recipe: Recipe, per_digit: int, batch_size: int) -> list[float]:
    """Per digit, the share of its prompts' images the classifier assigns to it."""
    suite = load_suite(f"digits-all-{per_digit}")
    records = list(suite.records)
    hits = torch.zeros(10)
    counts = torch.zeros(10)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = pipeline(
            [r.prompt for r in chunk],
            num_inference_steps=recipe.generation.steps,
            guidance_scale=recipe.generation.guidance,
            generator=[torch.Generator().manual_seed(r.seed) for r in chunk],
            output_type="pt",
        ).images
        predicted = classifier(images.cpu()).argmax(1)
        labels = torch.tensor([DIGIT_NAMES.index(r.label) for r in chunk])
        hits.index_add_(0, labels, (predicted == labels).float())
        counts.index_add_(0, labels, torch.ones(len(chunk)))
    return (hits / counts).tolist()


def summary(accuracy: list[float], pretrained: list[float], target: int) -> dict:
    """Target share and the mean over the other digits, each also relative to pretrained."""
    others = [d for d in range(10) if d != target]
    mean_others = sum(accuracy[d] for d in others) / 9
    mean_others_pre = sum(pretrained[d] for d in others) / 9
    return {
        "target_share": accuracy[target],
        "target_share_pretrained": pretrained[target],
        "target_ratio": accuracy[target] / pretrained[target] if pretrained[target] else float("nan"),
        "others": mean_others,
        "others_pretrained": mean_others_pre,
        "others_ratio": mean_others / mean_others_pre,
        "worst_other_ratio": min(accuracy[d] / pretrained[d] for d in others if pretrained[d] > 0),
        "per_digit": accuracy,
    }


def accuracy_with(pipeline, classifier, recipe: Recipe, tensors: dict, args: argparse.Namespace) -> list[float]:
    """`digit_accuracy` with `tensors` in the UNet in place of its own, which are put back after."""
    params = dict(pipeline.unet.named_parameters())
    original = {n: params[n].detach().clone() for n in tensors}
    apply_tensors(pipeline, tensors)
    try:
        return digit_accuracy(pipeline, classifier, recipe, args.per_digit, args.batch_size)
    finally:
        apply_tensors(pipeline, original)


def revived_accuracy(
    pipeline, classifier, recipe: Recipe, unlearned: dict, threshold: float | None, out: Path, args: argparse.Namespace
) -> list[float]:
    """Per-digit accuracy after the recipe's NMS attack on `unlearned` (changed tensors), its mask
    the exact zeros (threshold None) or the weights with |w| <= threshold, as an attacker facing
    the defense would guess it."""
    source = save_tensors(unlearned, out / "unlearned.safetensors")
    params = {"layers": list(recipe.methods[0].layers), "mask": {} if threshold is None else {"threshold": threshold}}
    run_attack(AttackJob(attack="nms", params=resolve("attack", "nms").parse(params), model=recipe.model,
                         unlearned_files=[source], out=out / "revive", original=recipe.model,
                         runtime=RuntimeSettings(device="cpu")))
    torch.set_num_threads(args.threads)  # the attack sets its own
    return accuracy_with(pipeline, classifier, recipe, load_file(AttackFiles(out / "revive").tensors), args)


def override(recipe: Recipe, params: dict, guidance: float | None) -> Recipe:
    """The recipe with `params` merged into its (first) method's params and, if given, another guidance."""
    method = dataclasses.replace(recipe.methods[0], params={**recipe.methods[0].params, **params})
    generation = recipe.generation if guidance is None else dataclasses.replace(recipe.generation, guidance=guidance)
    return dataclasses.replace(recipe, methods=[method], generation=generation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="digits-conceptprune-seven", help="recipe file or shipped recipe name")
    parser.add_argument("--saliency-recipe", default=None, help="also run this saliency recipe per target")
    parser.add_argument("--targets", nargs="+", default=["seven", "three", "one"])
    parser.add_argument("--per-digit", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=300)
    parser.add_argument("--no-defense", action="store_true", help="skip the sigma_M sweep")
    parser.add_argument("--params", type=json.loads, default={}, help="JSON merged into unlearn.params")
    parser.add_argument("--guidance", type=float, default=None, help="override generation.guidance")
    parser.add_argument("--zero-layers", nargs="*", default=[],
                        help="ablation: also measure the pretrained model with all layers matching each pattern zeroed")
    parser.add_argument("--out", default=str(ROOT / "runs/erasure"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    started = time.time()

    world = ensure_world()
    classifier = load_classifier(world).eval()
    base_recipe = override(load_recipe(args.recipe), args.params, args.guidance)
    pipeline = load_pipeline(base_recipe.model)
    params = dict(pipeline.unet.named_parameters())
    pretrained = digit_accuracy(pipeline, classifier, base_recipe, args.per_digit, args.batch_size)
    print(f"pretrained per-digit accuracy: {[round(a, 3) for a in pretrained]}")
    ablations = {}
    for pattern in args.zero_layers:
        names = select_layers(params, [pattern])
        zeros = {n: torch.zeros_like(params[n]) for n in names}
        ablations[pattern] = accuracy_with(pipeline, classifier, base_recipe, zeros, args)
        print(f"zeroing {len(names)} x '{pattern}': per-digit accuracy {[round(a, 3) for a in ablations[pattern]]}")

    methods = [("conceptprune", base_recipe)]
    if args.saliency_recipe:
        methods.append(("saliency", override(load_recipe(args.saliency_recipe), {}, args.guidance)))
    rows = []
    first: tuple[dict, dict] | None = None  # ConceptPrune on the first target: tensors, masks
    for target in args.targets:
        digit = DIGIT_NAMES.index(target)
        for label, recipe in methods:
            recipe = dataclasses.replace(recipe, concept=dataclasses.replace(recipe.concept, target=target))
            files = UnlearnFiles(out / f"{label}-{target}")
            run_unlearning(UnlearnJob.from_recipe(recipe, None, files.folder, RuntimeSettings(device="cpu")))
            tensors = load_file(files.tensors)
            masks = {n: m.bool() for n, m in load_file(files.mask).items()}
            accuracy = accuracy_with(pipeline, classifier, recipe, tensors, args)
            fraction = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
            unet_fraction = sum(int(m.sum()) for m in masks.values()) / sum(p.numel() for p in params.values())
            row = {"method": label, "target": target, "pruned_fraction_layers": fraction,
                   "pruned_fraction_unet": unet_fraction, **summary(accuracy, pretrained, digit)}
            row["pass"] = row["target_ratio"] <= 0.25 and row["others_ratio"] >= 0.85
            rows.append(row)
            if first is None:
                first = (tensors, masks)
            print(f"{label} {target}: target {row['target_share_pretrained']:.3f} -> {row['target_share']:.3f}, "
                  f"others {row['others_pretrained']:.3f} -> {row['others']:.3f}, pruned {100 * fraction:.2f}%")

    print("\n| method | target | pruned (layers) | pruned (UNet) | target share: pretrained -> unlearned (ratio) "
          "| others: pretrained -> unlearned (ratio) | worst other | pass |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['target']} | {100 * r['pruned_fraction_layers']:.2f}% | "
              f"{100 * r['pruned_fraction_unet']:.3f}% | {r['target_share_pretrained']:.3f} -> {r['target_share']:.3f} "
              f"({r['target_ratio']:.2f}) | {r['others_pretrained']:.3f} -> {r['others']:.3f} ({r['others_ratio']:.2f}) "
              f"| {r['worst_other_ratio']:.2f} | {'yes' if r['pass'] else 'no'} |")

    defense_rows = []
    if not args.no_defense and first is not None:
        target = args.targets[0]
        digit = DIGIT_NAMES.index(target)
        tensors, masks = first
        sigma_u = unmodified_sigma(tensors, masks)
        alpha = modified_share(masks)
        for variance in SIGMA_SQUARED:
            sigma = variance**0.5
            defended = obfuscate(tensors, masks, sigma, seed=0)
            s = summary(accuracy_with(pipeline, classifier, base_recipe, defended, args), pretrained, digit)
            attacked = revived_accuracy(pipeline, classifier, base_recipe, defended, sigma, out / f"attack-{variance:.0e}", args)
            defense_rows.append({
                "sigma_m_squared": variance, "sigma_m": sigma, "exact_zeros": exact_zeros(defended.values()),
                "exact_zeros_at_mask": exact_zeros(defended[n][masks[n]] for n in masks),
                "p_eq7": float(detectability(sigma, alpha, sigma, sigma_u)),
                "p_measured": empirical_detectability(defended, masks, sigma), **s,
                "revived_target_share": attacked[digit],
            })
        natural = exact_zeros(params[n].detach()[~masks[n]] for n in masks)
        print(f"\nDefense on '{target}': alpha = {alpha:.4f}, sigma_U = {sigma_u:.4f}; exact zeros without "
              f"defense = {exact_zeros(tensors.values())} ({natural} of them zero in the pretrained weights)")
        undefended = revived_accuracy(pipeline, classifier, base_recipe, tensors, None, out / "attack-undefended", args)
        print(f"NMS attack on the undefended model (exact-zero mask): target share {undefended[digit]:.3f}")
        print("| sigma_M^2 | sigma_M | exact zeros at pruned / all | p(w = sigma_M) Eq. 7 | measured | target share | others "
              "| attacked, mask abs(w) <= sigma_M: target share |")
        print("|---|---|---|---|---|---|---|---|")
        for r in defense_rows:
            print(f"| {r['sigma_m_squared']:.0e} | {r['sigma_m']:.4f} | {r['exact_zeros_at_mask']} / {r['exact_zeros']} "
                  f"| {r['p_eq7']:.3f} | {r['p_measured']:.3f} | {r['target_share']:.3f} | {r['others']:.3f} "
                  f"| {r['revived_target_share']:.3f} |")
        plot = plot_detectability(out / "detectability.png", sigma_u, [0.01 * sigma_u, 0.1 * sigma_u, sigma_u],
                                  marker=(alpha, 1e-3**0.5))
        print(f"\nEq. 7 surface: {plot}")

    seconds = time.time() - started
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {seconds:.0f} s")
    write_json_atomic(out / "erasure.json", {
        "pretrained": pretrained, "ablations": ablations, "rows": rows, "defense": defense_rows, "seconds": seconds,
        "config": {k: v for k, v in vars(args).items()}, "seeds": {"suite": f"digits-all-{args.per_digit}", "defense": 0},
        "provenance": provenance(),
    })


if __name__ == "__main__":
    main()
