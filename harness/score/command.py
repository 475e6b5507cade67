"""`harness score`: metrics over a folder of image shards, written as one JSON."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import settings_arguments, settings_from_arguments
from harness.errors import keyed
from harness.generate.suites import load_suite
from harness.recipe import load_recipe
from harness.runtime import RuntimeSettings
from harness.score import run as score
from harness.score.run import ScoreJob
from harness.settings.score import ScoreSettings


@dataclass
class ScoreOptions:
    """Which images, which suite, which metrics, where to."""

    shards: str
    """folder written by `harness generate`"""
    suite: str
    """the suite the shards were generated from"""
    out: str
    """metrics JSON to write"""
    metrics: list[str] = field(default_factory=list)
    """metric to compute (repeatable; registered: accuracy, clip, fid, nudenet, q16, or package.module:Class); default: the suite's own"""
    reference: str | None = None
    """shard folder of the model the CLIP score compares with (the original)"""
    recipe: str | None = None
    """recipe YAML whose `score` section supplies the defaults"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shards, suite, metrics and output; then each metric's model and options."""
    parser.set_defaults(_flags=settings_arguments(parser, ScoreOptions),
                        _score=settings_arguments(parser, ScoreSettings),
                        _runtime=settings_arguments(parser, RuntimeSettings, skip=("device",)))


def run(args: argparse.Namespace) -> int:
    """Score and print the metrics line by line."""
    options = settings_from_arguments(ScoreOptions, args, args._flags)
    base = load_recipe(options.recipe).score if options.recipe else ScoreSettings()
    settings = settings_from_arguments(ScoreSettings, args, args._score, base)
    runtime = settings_from_arguments(RuntimeSettings, args, args._runtime)
    with keyed("--suite"):
        suite = load_suite(options.suite, runtime.data_dir)
    metrics = [m for item in options.metrics for m in item.split(",") if m] or list(suite.metrics)
    result = score.run(ScoreJob(Path(options.shards), suite, metrics, Path(options.out),
                                reference=Path(options.reference) if options.reference else None,
                                settings=settings, runtime=runtime))
    for name, value in result.metrics.items():
        print(f"{name}: {value}")
    return 0

