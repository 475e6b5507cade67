"""`harness revive` (and `accelerate launch harness/revive.py`): the attack from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from harness.attack.magnitudes import MAGNITUDE_RULES
from harness.attack.runner import run_revival
from harness.errors import HarnessError
from harness.recipe import AttackSettings, MaskSettings, Strategy, load_recipe

log = logging.getLogger(__name__)

STRATEGIES = Strategy.__args__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options mirror the recipe's `attack` section; given options override the recipe."""
    parser.add_argument("--recipe", help="recipe YAML whose `attack` section supplies the defaults")
    parser.add_argument("--unlearned", help="unlearned model: hub id, folder, .safetensors or .pt")
    parser.add_argument("--original", help="original model, for sign accuracy and ideal-case ablations")
    parser.add_argument("--layers", action="append", metavar="GLOB", help="target layer pattern (repeatable)")
    parser.add_argument("--out", help="output folder for revived.safetensors and report.json")
    parser.add_argument("--top-k", type=float, help="fraction of completed values whose sign is kept")
    parser.add_argument("--magnitude", choices=MAGNITUDE_RULES, help="magnitude rule (default nms)")
    parser.add_argument("--strategy", choices=STRATEGIES, help="attack, the quant4 baseline, or an ideal case")
    mask = parser.add_mutually_exclusive_group()
    mask.add_argument("--mask-file", help="safetensors file of masks (nonzero = pruned) per layer")
    mask.add_argument("--zero-threshold", type=float, help="count |w| <= THRESHOLD as pruned (defended models)")
    parser.add_argument("--completion", choices=("softimpute", "reference-code"), help="completion mode")
    parser.add_argument("--lambda-ratio", type=float, help="lambda as a fraction of the top singular value")
    parser.add_argument("--path-steps", type=int, help="stages of the warm-started lambda path")
    parser.add_argument("--tol", type=float, help="relative change of imputed entries that ends a stage")
    parser.add_argument("--max-iters", type=int, help="iterations per stage at most")
    parser.add_argument("--max-rank", type=int, help="keep at most this many singular values")
    parser.add_argument("--dtype", choices=("float32", "float64"), help="completion precision")
    parser.add_argument("--seed", type=int, help="seed for sampled magnitudes and random signs")
    parser.add_argument("--device", help="auto (each process's own device), cpu, cuda, cuda:1, ...")


def settings_from_args(args: argparse.Namespace) -> AttackSettings:
    """The recipe's attack settings (or the defaults) with the given options applied."""
    settings = load_recipe(args.recipe).attack if args.recipe else AttackSettings()
    completion_changes = {
        key: value for key, value in {
            "mode": args.completion, "lambda_ratio": args.lambda_ratio, "path_steps": args.path_steps,
            "tol": args.tol, "max_iters": args.max_iters, "max_rank": args.max_rank, "dtype": args.dtype,
        }.items() if value is not None
    }
    changes = {
        key: value for key, value in {
            "unlearned": args.unlearned, "original": args.original, "layers": args.layers, "out": args.out,
            "top_k": args.top_k, "magnitude": args.magnitude, "strategy": args.strategy,
            "seed": args.seed, "device": args.device,
        }.items() if value is not None
    }
    try:
        if args.mask_file:
            changes["mask"] = MaskSettings(kind="file", file=args.mask_file)
        elif args.zero_threshold is not None:
            changes["mask"] = MaskSettings(kind="threshold", threshold=args.zero_threshold)
        if completion_changes:
            changes["completion"] = dataclasses.replace(settings.completion, **completion_changes)
        return dataclasses.replace(settings, **changes)
    except ValueError as error:
        raise HarnessError(f"invalid option: {error}") from None


def run(args: argparse.Namespace) -> int:
    """Run the sharded revival and print one line per layer on the main process."""
    settings = settings_from_args(args)
    out = run_revival(settings)
    if out is not None:
        print_summary(out)
    return 0


def print_summary(out) -> None:
    """A table of the report's layers."""
    import json

    report = json.loads((out / "report.json").read_text())
    print(f"{'layer':<70} {'shape':>11} {'pruned':>7} {'iters':>5} {'rank':>5} {'sec':>7} {'sign acc':>8}")
    for layer in report["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        accuracy = layer.get("sign_accuracy")
        print(f"{layer['name']:<70} {shape:>11} {layer['pruned']:>7} {layer['iterations']:>5} "
              f"{str(layer['rank']):>5} {layer['seconds']:>7.2f} {'' if accuracy is None else f'{accuracy:.3f}':>8}")
    print(f"wrote {out / 'revived.safetensors'} and {out / 'report.json'}")
