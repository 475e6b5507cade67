"""Seconds per attacked prompt of the per-prompt attacks (UnlearnDiff, P4D), with the prompts
attacked one at a time and together through one UNet call, in one run (PROTOCOL.md section 7).

The attacked model is an unlearned one (a method's output folder, `--unlearned`; by default the
world's AC model is made first); the judge never succeeds (a stand-in that names every image
"one"), so every prompt runs its whole budget: the figure is the cost of a prompt that resists,
the worst case. Rounds alternate (batched, one at a time, ...) and the best of each side counts.

    python benchmarks/per_prompt_speed.py --prompts 8 --timesteps 2 --iterations 10 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import harness.attack.prompt.per_prompt as per_prompt
from harness.attack.job import AttackJob
from harness.attack.run import run as run_attack
from harness.layout import UnlearnFiles
from harness.recipe import load_recipe
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.run import run as run_unlearning

AC_RECIPE = """\
name: speed
model: zoo:digits
concept: {target: seven, kind: digit, anchor: "a photo of a digit"}
methods:
  - {method: ac, layers: ["*attn2.to_k.*", "*attn2.to_v.*"], params: {lr: 1.0e-4, steps: 300, batch_size: 4}}
generation: {steps: 25, guidance: 3.0, scheduler: null, dtype: float32, batch_size: 64}
suites: [digits-seven-20]
"""


class NeverTheConcept(torch.nn.Module):
    """A judge that never sees the concept: every prompt runs its whole budget."""

    class_names = ["one", "seven"]

    def predict(self, images: torch.Tensor) -> list[str]:
        return ["one"] * len(images)


def unlearned_model(folder: Path) -> Path:
    """The world's AC model (made once into `folder`)."""
    files = UnlearnFiles(folder / "ac")
    if not files.record.is_file():
        recipe = folder / "ac.yaml"
        recipe.write_text(AC_RECIPE)
        run_unlearning(UnlearnJob.from_recipe(load_recipe(recipe), None, files.folder, RuntimeSettings(device="cpu")))
    return files.folder


def seconds_per_prompt(attack: str, unlearned: Path, out: Path, args: argparse.Namespace, batch: int) -> float:
    recipe = load_recipe(unlearned.parent / "ac.yaml")
    params = resolve("attack", attack).parse({
        "timesteps": args.timesteps, "iterations": args.iterations, "batch_prompts": batch,
        "prompts": [f"a handwritten seven number {i}" for i in range(args.prompts)]})
    job = AttackJob(attack=attack, params=params, model=recipe.model, unlearned_files=[UnlearnFiles(unlearned).tensors],
                    out=out, method="ac", generation=recipe.generation, concept=recipe.concept, original=recipe.model,
                    runtime=RuntimeSettings(device=args.device))
    start = time.perf_counter()
    run_attack(job)
    return (time.perf_counter() - start) / args.prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--timesteps", type=int, default=2, help="rounds per prompt")
    parser.add_argument("--iterations", type=int, default=10, help="steps per round")
    parser.add_argument("--batch", type=int, default=8, help="prompts together in the batched side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attacks", nargs="+", default=["unlearndiff", "p4d"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    per_prompt.load_image_classifier = lambda name, weights: NeverTheConcept()
    with tempfile.TemporaryDirectory() as scratch:
        unlearned = unlearned_model(Path(scratch))
        print(f"{'attack':<12} {'steps/prompt':>12} {'one at a time s/prompt':>24} {'batched s/prompt':>18} {'speed-up':>9}")
        for attack in args.attacks:
            best = {1: float("inf"), args.batch: float("inf")}
            for number in range(args.rounds):
                for batch in (args.batch, 1):
                    out = Path(scratch) / f"{attack}-{batch}-{number}"
                    best[batch] = min(best[batch], seconds_per_prompt(attack, unlearned, out, args, batch))
            print(f"{attack:<12} {args.timesteps * args.iterations:>12} {best[1]:>24.3f} {best[args.batch]:>18.3f} "
                  f"{best[1] / best[args.batch]:>8.2f}x")


if __name__ == "__main__":
    main()
