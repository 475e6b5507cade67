"""`harness generate`: one suite's images with one model, into WebDataset shards."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from harness.eval.generate import generate_suite
from harness.eval.suites import load_suite
from harness.recipe import GenerationSettings, load_recipe

_SETTINGS = {
    "steps": int,
    "guidance": float,
    "height": int,
    "width": int,
    "batch_size": int,
    "fixed_seed": int,
    "shard_size": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, suite and output; sampling options override the recipe's (or the protocol's)."""
    parser.add_argument("--model", required=True, help="pipeline: hub id, diffusers folder or zoo:NAME")
    parser.add_argument(
        "--tensors",
        nargs="+",
        default=[],
        metavar="FILE",
        help="safetensors files of changed UNet tensors to apply, in order",
    )
    parser.add_argument("--suite", required=True, help="prompt suite name (see `harness data`)")
    parser.add_argument("--data-dir", help="folder of local prompt files (default $HARNESS_DATA_DIR)")
    parser.add_argument("--out", required=True, type=Path, help="output folder of shard-*.tar")
    parser.add_argument("--tag", help="model name recorded with each image (default: the --out folder's parent name)")
    parser.add_argument("--shard", type=int, help="generate this shard only (a SLURM array task)")
    parser.add_argument("--recipe", help="recipe YAML whose `generation` section supplies the defaults")
    defaults = GenerationSettings()
    for name, kind in _SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {getattr(defaults, name)}")
    parser.add_argument(
        "--seed-policy", choices=("row", "fixed"), help="row: each row's seed; fixed: --fixed-seed for all"
    )
    parser.add_argument("--guidance-policy", choices=("fixed", "row"), help="row: a row's own guidance where given")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), help="auto: float16 on GPU")
    parser.add_argument(
        "--scheduler", help="diffusers scheduler class (default PNDMScheduler; 'none' keeps the model's)"
    )
    parser.add_argument("--devices", type=devices_option, default=1, help="devices (processes) per node, or 'auto'")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (SLURM or torchrun sets the rest)")


def devices_option(text: str) -> int | str:
    """A `--devices` value: a positive count or 'auto'."""
    if text == "auto":
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The recipe's generation settings (or the protocol's) with given options applied."""
    settings = load_recipe(args.recipe).generation if args.recipe else GenerationSettings()
    changes = {name: getattr(args, name) for name in (*_SETTINGS, "seed_policy", "guidance_policy", "dtype")}
    changes = {name: value for name, value in changes.items() if value is not None}
    if args.scheduler is not None:
        changes["scheduler"] = None if args.scheduler.lower() == "none" else args.scheduler
    return dataclasses.replace(settings, **changes)


def run(args: argparse.Namespace) -> int:
    """Generate and print the shard paths."""
    suite = load_suite(args.suite, args.data_dir)
    paths = generate_suite(
        args.model,
        args.tensors,
        suite,
        settings_from_args(args),
        args.out,
        model_tag=args.tag or args.out.resolve().parent.name,
        shard=args.shard,
        devices=args.devices,
        accelerator=args.accelerator,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
    )
    print(f"{len(paths)} complete shards in {args.out}")
    return 0
