"""`harness zoo build|info digits`: retrain the miniature world, or say where it is and how good."""

from __future__ import annotations

import argparse
import json
import logging

import torch

from harness.errors import HarnessError
from harness.worlds.digits.data import DIGIT_NAMES
from harness.worlds.digits.store import (
    REPORT_FILE,
    SHIPPED_DIR,
    BuildSettings,
    build_world,
    check_name,
    export_world,
    is_complete,
    world_dir,
)
from harness.worlds.digits.train import TrainSettings, warm_start_folder

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`build NAME [--cache-dir DIR] [--steps N] [--seed S] ...` and `info NAME [--cache-dir DIR]`."""
    parser.add_argument("action", choices=("build", "info"), help="build: train the world; info: describe it")
    parser.add_argument("name", help="the world (digits)")
    parser.add_argument("--cache-dir", help="cache root (default $HARNESS_CACHE or ~/.cache/harness)")
    defaults = TrainSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="generator training steps")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of data order, noise and init")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="generator batch size")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="measure generation accuracy every N steps (0: never)")
    parser.add_argument("--eval-per-digit", type=int, default=BuildSettings.eval_per_digit,
                        help="images per digit in the final measurement")
    parser.add_argument("--ffn-routing", type=float, default=defaults.ffn_routing,
                        help="weight of the loss that routes the prompt through the feed-forwards (0: off)")
    parser.add_argument("--ffn-selectivity", type=float, default=defaults.ffn_selectivity,
                        help="weight of the loss that gives each digit its own feed-forward units (0: off)")
    parser.add_argument("--init-from", metavar="DIR",
                        help="start the generator from this world folder's weights (default: a fresh init)")
    parser.add_argument("--exclude", action="append", default=[], metavar="DIGIT",
                        help="build a control world whose generator never sees this digit (a name or 0-9; "
                             "repeatable) into the cache's zoo/digits-without-DIGIT, beside the installed world, "
                             "with its text encoder; its pipeline/unet is a `checkpoint` row of a matrix")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--export", metavar="DIR", help="also write the built world in shippable fp16 form to DIR")


def run(args: argparse.Namespace) -> int:
    """Build or describe the named world."""
    check_name(args.name)
    folder = world_dir(args.name, args.cache_dir)
    excluded = tuple(sorted({_digit(value) for value in args.exclude}))
    if excluded:
        folder = folder.with_name(f"{args.name}-without-" + "-".join(DIGIT_NAMES[d] for d in excluded))
    if args.action == "info":
        return _info(folder)
    for flag in ("steps", "batch_size", "eval_per_digit", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise HarnessError(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    for flag in ("ffn_routing", "ffn_selectivity"):
        if getattr(args, flag) < 0:
            raise HarnessError(f"--{flag.replace('_', '-')}: expected a weight >= 0, got {getattr(args, flag)}")
    if args.init_from:
        warm_start_folder(args.init_from)
    train = TrainSettings(steps=args.steps, seed=args.seed, batch_size=args.batch_size, eval_every=args.eval_every,
                          ffn_routing=args.ffn_routing, ffn_selectivity=args.ffn_selectivity,
                          init_from=args.init_from, exclude=excluded)
    report = build_world(folder, BuildSettings(train=train, eval_per_digit=args.eval_per_digit))
    quality = report["generation_accuracy"]
    print(f"world: {folder}")
    print(f"classifier held-out top-1: {report['classifier']['heldout_accuracy']:.4f}")
    print(f"generation accuracy: mean {quality['mean']:.3f}, worst digit {quality['min']:.3f}")
    if excluded:
        print(f"a control without {', '.join(DIGIT_NAMES[d] for d in excluded)}; as a matrix row: "
              f"{{method: checkpoint, params: {{path: {folder / 'pipeline' / 'unet'}}}}}")
    if args.export:
        print(f"exported: {export_world(folder, args.export)}")
    return 0


def _digit(value: str) -> int:
    """A digit named by its word or numeral; a one-line error otherwise."""
    name = value.strip().lower()
    if name.isdigit() and int(name) < 10:
        return int(name)
    if name in DIGIT_NAMES:
        return DIGIT_NAMES.index(name)
    raise HarnessError(f"--exclude {value}: not a digit (choose from {', '.join(DIGIT_NAMES)} or 0-9)")


def _info(folder) -> int:
    source = folder if is_complete(folder) else SHIPPED_DIR if is_complete(SHIPPED_DIR) else None
    print(f"world folder: {folder} ({'present' if source == folder else 'not yet installed'})")
    if source is None:
        print("no shipped weights: the first use trains the world (`harness zoo build digits`)")
        return 0
    report = json.loads((source / REPORT_FILE).read_text())
    quality = report["generation_accuracy"]
    print(f"report: {source / REPORT_FILE}")
    print(f"built by: {report['build_command']} ({report['seconds']:.0f} s)")
    print(f"classifier held-out top-1: {report['classifier']['heldout_accuracy']:.4f}")
    print(
        f"generation accuracy ({quality['per_digit_images']} images per digit, {quality['num_inference_steps']} "
        f"steps, guidance {quality['guidance_scale']}): mean {quality['mean']:.3f}, worst digit {quality['min']:.3f}"
    )
    print("per digit: " + ", ".join(f"{d}: {v:.2f}" for d, v in quality["per_digit"].items()))
    return 0
