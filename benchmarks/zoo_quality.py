"""How good the miniature world is: classifier held-out top-1, generation accuracy per digit, determinism.

    python benchmarks/zoo_quality.py [--cache-dir DIR] [--per-digit 100] [--guidance 1 2 3 5] [--steps 25]

For each (sampler steps, guidance) pair, 100 images per digit prompt ("a photo of the digit
seven") at fixed seeds (seed 1000*digit + i) are classified by the world's classifier; the table
gives the fraction classified as the prompted digit, per digit, the mean and the worst. The bar:
classifier >= 0.97, generation mean >= 0.90 and every digit >= 0.80 at the world's defaults.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from harness.provenance import provenance, write_json_atomic
from harness.worlds.digits.classifier import accuracy, load_classifier
from harness.worlds.digits.data import heldout_digits
from harness.worlds.digits.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, DigitsPipeline
from harness.worlds.digits.quality import generation_accuracy, image_seed
from harness.worlds.digits.store import PIPELINE_DIR, ensure_world


def _determinism(pipeline: DigitsPipeline) -> bool:
    """Whether the same seeds give bit-identical images twice, alone or in another batch."""
    prompts = ["a photo of the digit seven", "a photo of the digit two"]
    seeds = [image_seed(7, 0), image_seed(2, 0)]

    def draw(p: list[str], s: list[int]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(x) for x in s]
        return pipeline(p, generator=generators, output_type="pt").images

    first = draw(prompts, seeds)
    return torch.equal(first, draw(prompts, seeds)) and torch.allclose(first[1:], draw(prompts[1:], seeds[1:]), atol=1e-5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="cache root (default $HARNESS_CACHE or ~/.cache/harness)")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[DEFAULT_STEPS])
    parser.add_argument("--guidance", type=float, nargs="+", default=[DEFAULT_GUIDANCE])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world = ensure_world(args.cache_dir)
    classifier = load_classifier(world)
    pipeline = DigitsPipeline.from_pretrained(world / PIPELINE_DIR)
    pipeline.set_progress_bar_config(disable=True)
    images, labels = heldout_digits(classifier.size)
    classifier_accuracy = accuracy(classifier, images, labels)
    print(f"world: {world}")
    print(f"classifier held-out top-1: {classifier_accuracy:.4f} on {len(labels)} real digits")

    rows = []
    header = "| steps | guidance | " + " | ".join(str(d) for d in range(10)) + " | mean | worst | s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for steps in args.steps:
        for guidance in args.guidance:
            started = time.time()
            result = generation_accuracy(
                pipeline, classifier, per_digit=args.per_digit, num_inference_steps=steps, guidance_scale=guidance
            )
            result["seconds"] = round(time.time() - started, 1)
            rows.append(result)
            cells = " | ".join(f"{result['per_digit'][str(d)]:.2f}" for d in range(10))
            print(f"| {steps} | {guidance:g} | {cells} | {result['mean']:.3f} | {result['min']:.2f} | {result['seconds']:.0f} |",
                  flush=True)

    deterministic = _determinism(pipeline)
    print(f"same seed, same image (twice, and alone vs in a batch): {deterministic}")
    if args.json:
        write_json_atomic(args.json, {
            "world": str(world), "classifier_heldout_accuracy": classifier_accuracy,
            "generation": rows, "deterministic": deterministic,
            "config": vars(args), "seeds": {"image": "1000 * digit + index"}, "provenance": provenance(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
