"""`harness revive` (and `accelerate launch harness/revive.py`): the revival attack from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from harness.attack import run as attack_stage
from harness.attack.job import AttackJob
from harness.attack.revival.runner import make_accelerator
from harness.attack.revival.settings import IDEAL_STRATEGIES, RevivalParams, ReviveSettings
from harness.config import settings_arguments, settings_from_arguments
from harness.errors import HarnessError
from harness.layout import AttackFiles
from harness.recipe import load_recipe
from harness.records import AttackRecord
from harness.registry import resolve
from harness.runtime import RuntimeSettings, resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The revival's options; with --recipe, the recipe's revival attack supplies the defaults."""
    parser.add_argument("--recipe", help="recipe YAML whose revival attack (--attack) supplies the defaults")
    parser.add_argument("--attack", help="which of the recipe's attacks (default: its first revival attack)")
    parser.set_defaults(_flags=settings_arguments(parser, ReviveSettings))


def settings_from_args(args: argparse.Namespace) -> ReviveSettings:
    """The recipe attack's params (or the defaults) with the given options applied."""
    base = ReviveSettings()
    if args.recipe:
        recipe = load_recipe(args.recipe, controls=False)
        entry = recipe.attack(args.attack)[1] if args.attack else next(
            (a for a in recipe.attacks if resolve("attack", a.attack).params is RevivalParams), None)
        if entry is None:
            raise HarnessError(f"{recipe.source}: attacks: no revival attack to take defaults from")
        plugin = resolve("attack", entry.attack)
        if plugin.params is not RevivalParams:
            raise HarnessError(f"--attack {entry.name}: not a revival attack ({entry.attack})")
        base = dataclasses.replace(base, params=plugin.parse(entry.params), original=recipe.model,
                                   fidelity=recipe.fidelity)
    elif args.attack:
        raise HarnessError("--attack needs --recipe")
    return settings_from_arguments(ReviveSettings, args, args._flags, base)


def run(args: argparse.Namespace) -> int:
    """Run the sharded revival and print one line per layer on the main process."""
    settings = settings_from_args(args)
    if not settings.unlearned:
        raise HarnessError("--unlearned: no unlearned model given")
    if not settings.out:
        raise HarnessError("--out: no output folder given")
    if settings.params.strategy in IDEAL_STRATEGIES and not settings.original:
        raise HarnessError(f"--strategy {settings.params.strategy}: the ideal cases need the original weights (--original)")
    if settings.device != "auto":
        resolve_device(settings.device)
    job = AttackJob(attack=_attack_name(settings), params=settings.params, model=settings.unlearned,
                    unlearned_files=[], out=Path(settings.out), name="revive", original=settings.original,
                    fidelity=settings.fidelity, runtime=RuntimeSettings(device=settings.device), source="", entry="")
    record = attack_stage.run(job, make_accelerator(settings.device))
    if record is None:
        return 0
    if not record.applicable:
        if settings.allow_nothing_pruned:
            print(f"nothing revived: {record.reason}")
            return 0
        raise HarnessError(f"--unlearned {settings.unlearned}: {record.reason}; for a model defended with Gaussian "
                           "obfuscation give the positions: --zero-threshold T, --mask-detector NAME or --mask-file F; "
                           "for a few pruned entries, --min-pruned-share S")
    print_summary(record, AttackFiles(Path(settings.out)))
    return 0


def _attack_name(settings: ReviveSettings) -> str:
    """The registered revival attack of the settings' strategy and magnitude rule."""
    strategy = settings.params.strategy
    return settings.params.magnitude if strategy == "attack" else strategy


def print_summary(record: AttackRecord, files: AttackFiles) -> None:
    """A table of the revival's layers."""
    assert record.revival is not None
    print(f"{'layer':<70} {'shape':>11} {'pruned':>7} {'iters':>5} {'rank':>5} {'sec':>7} {'sign acc':>8}")
    for layer in record.revival.layers:
        shape = "x".join(map(str, layer.shape))
        accuracy = layer.sign_accuracy
        print(f"{layer.name:<70} {shape:>11} {layer.pruned:>7} {layer.iterations:>5} "
              f"{str(layer.rank):>5} {layer.seconds:>7.2f} {'' if accuracy is None else f'{accuracy:.3f}':>8}")
    print(f"wrote {files.tensors} and {files.record}")
