"""`harness score`: metrics over a folder of image shards, written as one JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.eval.commands.generate import devices_option
from harness.eval.metrics import METRICS
from harness.eval.score import ScoreSettings, score_suite
from harness.eval.suites import load_suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Shards, suite, metrics and output; then each metric's model and options."""
    defaults = ScoreSettings()
    parser.add_argument("--shards", required=True, type=Path, help="folder written by `harness generate`")
    parser.add_argument("--suite", required=True, help="the suite the shards were generated from")
    parser.add_argument("--data-dir", help="folder of local prompt files (default $HARNESS_DATA_DIR)")
    parser.add_argument("--metrics", help=f"comma-separated, of {','.join(METRICS)} (default: the suite's own)")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument(
        "--reference", type=Path, help="shard folder of the model CLIP score compares with (the original)"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per metric batch")
    parser.add_argument("--classifier", default=defaults.classifier, help="resnet50, digits or package.module:factory")
    parser.add_argument("--classifier-weights", help="classifier weights file (resnet50) or world folder (digits)")
    parser.add_argument(
        "--clip-model", default=defaults.clip_model, help="transformers CLIP id/folder or open_clip:ARCH[:TAG]"
    )
    parser.add_argument("--clip-weights", help="CLIP weights: a transformers folder or an open_clip checkpoint")
    parser.add_argument("--fid-reference", help="digits-heldout, or a folder of real images or of shards")
    parser.add_argument("--fid-features", default=defaults.fid_features, choices=("auto", "inception", "classifier"))
    parser.add_argument("--fid-weights", help="Inception weights file for torchmetrics' FID")
    parser.add_argument("--cache-dir", help="where FID reference statistics are cached")
    parser.add_argument("--nudenet-labels", help="comma-separated NudeNet labels to count (default: the nine exposed)")
    parser.add_argument(
        "--nudenet-threshold", type=float, default=defaults.nudenet_threshold, help="detection score threshold"
    )
    parser.add_argument("--nudenet-model", help="NudeNet onnx model (default: the bundled 320n)")
    parser.add_argument("--devices", type=devices_option, default=1, help="processes per node, or 'auto'")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes")


def run(args: argparse.Namespace) -> int:
    """Score and print the metrics line by line."""
    suite = load_suite(args.suite, args.data_dir)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(suite.metrics)
    defaults = ScoreSettings()
    settings = ScoreSettings(
        batch_size=args.batch_size,
        classifier=args.classifier,
        classifier_weights=args.classifier_weights,
        clip_model=args.clip_model,
        clip_weights=args.clip_weights,
        fid_reference=args.fid_reference,
        fid_features=args.fid_features,
        fid_weights=args.fid_weights,
        cache_dir=args.cache_dir,
        nudenet_labels=args.nudenet_labels.split(",") if args.nudenet_labels else defaults.nudenet_labels,
        nudenet_threshold=args.nudenet_threshold,
        nudenet_model=args.nudenet_model,
    )
    result = score_suite(
        args.shards,
        suite,
        metrics,
        args.out,
        reference=args.reference,
        settings=settings,
        devices=args.devices,
        accelerator=args.accelerator,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
    )
    for name, value in result["metrics"].items():
        print(f"{name}: {value}")
    return 0
