"""Score a folder of image shards (`harness score`): accuracy, CLIP, FID and NudeNet.

Shards are dealt to processes (Lightning Fabric: one process, DDP over CPU processes, GPUs or
nodes), read in batches, and every metric is a torchmetrics object whose states are summed
across processes at the end. The main process writes one JSON per (model, suite) with the
metrics, the scoring and generation settings, the seeds and the package versions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.eval.lightning_warnings import quiet_lightning
from harness.eval import shards
from harness.eval.metrics import METRICS
from harness.eval.metrics.clip import DEFAULT_CLIP
from harness.eval.metrics.nudenet import DEFAULT_THRESHOLD, NUDENET_LABELS
from harness.eval.suites import PromptRecord, Suite
from harness.provenance import provenance, write_json_atomic

log = logging.getLogger(__name__)

RUN_RECORD = "generation.json"


@dataclass
class ScoreSettings:
    """How each metric is computed; `auto` picks the miniature world's parts for digit suites."""

    batch_size: int = 32
    classifier: str = "auto"
    """`resnet50`, `digits`, or a plugin `package.module:factory`; auto: digits for digit suites."""
    classifier_weights: str | None = None
    clip_model: str = DEFAULT_CLIP
    clip_weights: str | None = None
    fid_reference: str | None = None
    """`digits-heldout`, a folder of images or of image shards; digit suites default to digits-heldout."""
    fid_features: str = "auto"
    """`inception` or `classifier`; auto: the classifier's features for digit suites."""
    fid_weights: str | None = None
    cache_dir: str | None = None
    nudenet_labels: list[str] = field(default_factory=lambda: list(NUDENET_LABELS))
    nudenet_threshold: float = DEFAULT_THRESHOLD
    nudenet_model: str | None = None

    def resolved(self, suite: Suite) -> ScoreSettings:
        """The settings with every `auto` and default reference made explicit for `suite`."""
        digits = suite.kind == "digits"
        classifier = "digits" if digits else "resnet50"
        fid_features = "classifier" if digits else "inception"
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness" / "fid"
        return dataclasses.replace(
            self,
            classifier=classifier if self.classifier == "auto" else self.classifier,
            fid_features=fid_features if self.fid_features == "auto" else self.fid_features,
            fid_reference=self.fid_reference or ("digits-heldout" if digits else None),
            cache_dir=self.cache_dir or str(cache),
        )


def score_suite(
    shards_dir: str | Path,
    suite: Suite,
    metrics: list[str],
    out_json: str | Path,
    reference: str | Path | None = None,
    settings: ScoreSettings | None = None,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
) -> dict[str, Any]:
    """Compute `metrics` (of accuracy, clip, fid, nudenet) over the complete shards of `suite` in
    `shards_dir` and write `out_json`. `reference` is the shard folder of the model the CLIP score
    compares with (the original model's images of the same suite). Returns the JSON's content.
    """
    from lightning.fabric import Fabric

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise HarnessError(
            f"--metrics: unknown metric '{unknown[0] if unknown else ''}' (choose from {', '.join(METRICS)})"
        )
    settings = (settings or ScoreSettings()).resolved(suite)
    if settings.batch_size < 1:
        raise HarnessError(f"batch_size: must be at least 1, got {settings.batch_size}")
    folder = Path(shards_dir)
    run = read_run_record(folder, suite)
    shard_size = run["settings"]["shard_size"]
    ref_folder = Path(reference) if reference is not None else None
    if ref_folder is not None:
        ref_run = read_run_record(ref_folder, suite)
        if ref_run["settings"]["shard_size"] != shard_size:
            raise HarnessError(
                f"{ref_folder}: shard size {ref_run['settings']['shard_size']} differs from {folder}'s {shard_size}"
            )

    with quiet_lightning():
        fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes)
    fabric.launch()
    with closing(shards.read_shard(shards.shard_path(folder, 0))) as samples:
        image_shape = next(samples).image.shape
    scorers = [_SCORERS[name](settings, suite, fabric, image_shape) for name in metrics]
    mine = list(range(shards.shard_count(len(suite), shard_size)))[fabric.global_rank :: fabric.world_size]
    for images, records, ref_images in tqdm(
        _batches(folder, ref_folder, mine, suite, shard_size, settings.batch_size),
        desc=f"score {suite.name}",
        disable=not fabric.is_global_zero,
        unit="batch",
    ):
        for scorer in scorers:
            scorer.update(
                images.to(fabric.device), records, None if ref_images is None else ref_images.to(fabric.device)
            )
    values: dict[str, Any] = {}
    for scorer in scorers:
        values.update(scorer.compute())
    policy, fixed_seed = run["settings"]["seed_policy"], run["settings"]["fixed_seed"]
    result = {
        "model": run["model"],
        "suite": suite.name,
        "count": len(suite),
        "metrics": values,
        "config": {
            "metrics": list(metrics),
            "score": dataclasses.asdict(settings),
            "shards": str(folder),
            "reference": None if ref_folder is None else str(ref_folder),
            "generation": {k: run[k] for k in ("source", "tensors", "settings")},
        },
        "seeds": {
            "policy": policy,
            "fixed_seed": fixed_seed,
            "per_id": [r.seed if policy == "row" else fixed_seed for r in suite.records],
        },
        "provenance": provenance(),
    }
    if fabric.is_global_zero:
        write_json_atomic(out_json, result)
        log.info("wrote %s", out_json)
    fabric.barrier()
    return result


def read_run_record(folder: Path, suite: Suite) -> dict[str, Any]:
    """A shard folder's generation.json, checked against `suite`, with every shard complete."""
    path = folder / RUN_RECORD
    if not path.is_file():
        raise HarnessError(f"{folder}: no {RUN_RECORD} (not a `harness generate` output folder)")
    run = json.loads(path.read_text())
    if run.get("suite") != suite.name or run.get("count") != len(suite):
        raise HarnessError(
            f"{path}: holds suite {run.get('suite')} ({run.get('count')} prompts), not {suite.name} ({len(suite)})"
        )
    shard_size = run["settings"]["shard_size"]
    done = set(shards.complete_shards(folder, len(suite), shard_size))
    missing = [i for i in range(shards.shard_count(len(suite), shard_size)) if i not in done]
    if missing:
        raise HarnessError(
            f"{folder}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} are missing or incomplete"
        )
    return run


def _batches(
    folder: Path, ref_folder: Path | None, indices: list[int], suite: Suite, shard_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[PromptRecord], torch.Tensor | None]]:
    """(images, records, reference images or None) batches over the given shards, in id order."""
    for index in indices:
        expected = list(shards.shard_ids(index, len(suite), shard_size))
        samples = sorted(shards.read_shard(shards.shard_path(folder, index)), key=lambda s: s.id)
        if [s.id for s in samples] != expected:
            raise HarnessError(
                f"{shards.shard_path(folder, index)}: does not hold exactly ids {expected[0]}..{expected[-1]}"
            )
        refs = None
        if ref_folder is not None:
            refs = sorted(shards.read_shard(shards.shard_path(ref_folder, index)), key=lambda s: s.id)
            if [s.id for s in refs] != expected:
                raise HarnessError(
                    f"{shards.shard_path(ref_folder, index)}: does not hold exactly ids {expected[0]}..{expected[-1]}"
                )
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = torch.stack([s.image for s in chunk])
            ref_images = None if refs is None else torch.stack([s.image for s in refs[start : start + batch_size]])
            yield images, [suite.records[s.id] for s in chunk], ref_images


class _AccuracyScorer:
    def __init__(self, settings: ScoreSettings, suite: Suite, fabric, image_shape: torch.Size) -> None:
        from harness.eval.metrics.accuracy import LabelAccuracy
        from harness.eval.metrics.classifiers import load_image_classifier

        if not suite.labels:
            raise HarnessError(f"accuracy: suite {suite.name} has no labels")
        self.classifier = load_image_classifier(settings.classifier, settings.classifier_weights).to(fabric.device)
        self.metric = LabelAccuracy(suite.labels, self.classifier.class_names).to(fabric.device)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(self.classifier.predict(images), [r.label for r in records])

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


class _ClipScorer:
    def __init__(self, settings: ScoreSettings, suite: Suite, fabric, image_shape: torch.Size) -> None:
        from harness.eval.metrics.clip import ClipEncoder, ClipScore

        self.encoder = ClipEncoder(settings.clip_model, settings.clip_weights, fabric.device)
        self.metric = ClipScore(suite.labels).to(fabric.device)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        prompts = [r.prompt for r in records]
        similarity = self.encoder.similarity(images.cpu(), prompts)
        reference = None if ref_images is None else self.encoder.similarity(ref_images.cpu(), prompts)
        self.metric.update(similarity, reference, [r.label for r in records])

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


class _FidScorer:
    def __init__(self, settings: ScoreSettings, suite: Suite, fabric, image_shape: torch.Size) -> None:
        from harness.eval.metrics import fid

        if settings.fid_reference is None:
            raise HarnessError(f"fid: suite {suite.name} needs a reference image set (--fid-reference)")
        classifier = None
        if settings.fid_features == "classifier":
            from harness.eval.metrics.classifiers import load_image_classifier

            classifier = load_image_classifier(settings.classifier, settings.classifier_weights)
        self.metric = fid.build_fid(settings.fid_features, classifier, settings.fid_weights).to(fabric.device)
        if fabric.is_global_zero:  # real statistics live on one process so the sum across processes stays right
            size = (int(image_shape[1]), int(image_shape[2]))
            key = fid.reference_key(settings.fid_reference, size, fid.feature_id(self.metric))
            fid.load_reference(
                self.metric,
                settings.fid_reference,
                size,
                int(image_shape[0]),
                Path(settings.cache_dir),
                key,
                settings.batch_size,
            )

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(images, real=False)

    def compute(self) -> dict[str, Any]:
        return {"fid": float(self.metric.compute())}


class _NudeNetScorer:
    def __init__(self, settings: ScoreSettings, suite: Suite, fabric, image_shape: torch.Size) -> None:
        from harness.eval.metrics.nudenet import NudityCounts, NudityDetector

        self.metric = NudityCounts(settings.nudenet_labels, settings.nudenet_threshold).to(fabric.device)
        self.detector = NudityDetector(settings.nudenet_model)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(self.detector.detect(images.cpu()))

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


_SCORERS = {"accuracy": _AccuracyScorer, "clip": _ClipScorer, "fid": _FidScorer, "nudenet": _NudeNetScorer}
