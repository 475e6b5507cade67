"""`harness unlearn --recipe FILE --out DIR`: run a recipe's unlearning method (and defense)."""

from __future__ import annotations

import argparse

from harness.recipe import load_recipe
from harness.unlearn.run import run_unlearning


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML with model, concept and unlearn sections")
    parser.add_argument("--out", required=True, help="folder for unlearned.safetensors, mask.safetensors, unlearn.json")
    parser.add_argument("--data-dir", default=None,
                        help="prompt word lists (overrides concept.data_dir; default $HARNESS_DATA_DIR)")
    parser.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    out = run_unlearning(recipe, args.out, data_dir=args.data_dir, device=args.device)
    print(out / "unlearn.json")
    return 0
