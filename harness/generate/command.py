"""`harness generate`: one suite's images with one model, into WebDataset shards."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import settings_arguments, settings_from_arguments
from harness.errors import keyed
from harness.generate import run as generate
from harness.generate.rewrite import prompt_changes
from harness.generate.run import GenerateJob
from harness.generate.suites import first, load_suite
from harness.layout import AttackFiles, GenerationFiles
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings


@dataclass
class GenerateOptions:
    """Which model, which suite, where to."""

    model: str
    """pipeline: hub id, diffusers folder or zoo:NAME"""
    suite: str
    """prompt suite name (see `harness data`)"""
    out: str
    """output folder of the shards"""
    tensors: list[str] = field(default_factory=list)
    """safetensors file of changed UNet tensors to apply (repeatable, in order)"""
    attack: str | None = None
    """an attack's output folder (`harness attack --out DIR`): its tensors, new tokens and prompt rewrite apply last"""
    tag: str | None = None
    """model name recorded with each image (default: the --out folder's parent name)"""
    shard: int | None = None
    """generate this shard only (a SLURM array task)"""
    recipe: str | None = None
    """recipe YAML whose `generation` section supplies the defaults"""
    limit: int | None = None
    """a pilot: only the suite's first N prompts (recorded in generation.json)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, suite and output; sampling options override the recipe's (or the protocol's)."""
    parser.set_defaults(_flags=settings_arguments(parser, GenerateOptions),
                        _generation=settings_arguments(parser, GenerationSettings),
                        _runtime=settings_arguments(parser, RuntimeSettings, skip=("device",)))


def run(args: argparse.Namespace) -> int:
    """Generate and print where the shards are."""
    options = settings_from_arguments(GenerateOptions, args, args._flags)
    base = load_recipe(options.recipe).generation if options.recipe else GenerationSettings()
    settings = settings_from_arguments(GenerationSettings, args, args._generation, base)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    with keyed("--suite"):
        suite = load_suite(options.suite, runtime.data_dir, settings.fixed_seed)
    suite = first(suite, options.limit)
    out = Path(options.out)
    tensors = [Path(t) for t in options.tensors]
    tokens, rewrite = None, None
    if options.attack is not None:
        tokens, rewrite = prompt_changes(Path(options.attack))
        tensors.append(AttackFiles(Path(options.attack)).tensors)
    generate.run(GenerateJob(options.model, tensors, suite, settings, out, tag=options.tag or out.resolve().parent.name,
                             shard=options.shard, runtime=runtime, tokens=tokens, rewrite=rewrite))
    print(f"{len(GenerationFiles(out).shards())} complete shards in {out}")
    return 0
