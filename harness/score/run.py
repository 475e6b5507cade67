"""The score stage: metrics over a folder of image shards (accuracy, CLIP, FID, NudeNet, or a
plugin's).

Shards are dealt to processes (Lightning Fabric: one process, DDP over CPU processes, GPUs or
nodes), read in batches, and every metric is a torchmetrics object whose states are summed
across processes at the end. The main process writes one result per (model, suite) with the
metrics, the scoring and generation settings, the seeds and the package versions. A result
with the same settings key (the images' generation key, the reference's, the scoring settings)
is reused without work.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, keyed
from harness.generate import shards
from harness.generate.suites import PromptRecord, Suite
from harness.layout import GenerationFiles
from harness.lightning_quiet import quiet_lightning
from harness.outputs import check_output
from harness.progress import bar
from harness.provenance import provenance
from harness.records import GenerationRecord, ScoreResult, completed, read_record, settings_key, write_record
from harness.registry import resolve
from harness.runtime import RuntimeSettings
from harness.settings.score import ScoreSettings

log = logging.getLogger(__name__)


@dataclass
class ScoreJob:
    """The metrics of one folder of image shards of one suite, into one JSON file."""

    shards: Path
    suite: Suite
    metrics: list[str]
    out: Path
    reference: Path | None = None
    """The shard folder the CLIP score compares with (the original model's images of the suite)."""
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    runtime: RuntimeSettings = field(default_factory=lambda: RuntimeSettings(accelerator="cpu"))


def run(job: ScoreJob) -> ScoreResult:
    """Compute the job's metrics over the complete shards of its suite and write its JSON file."""
    shards_dir, suite, metrics, out_json = job.shards, job.suite, job.metrics, job.out
    reference, settings, runtime = job.reference, job.settings, job.runtime
    from lightning.fabric import Fabric

    if not metrics:
        raise HarnessError(f"--metrics: no metric named (suite {suite.name} has no default metrics)")
    with keyed("--metrics"):
        scorer_classes = [resolve("metric", name).target for name in metrics]
    settings = settings.resolved(suite.score_defaults)
    folder = Path(shards_dir)
    suite = pilot_suite(folder, suite)
    run = read_run_record(folder, suite)
    ref_folder = Path(reference) if reference is not None else None
    ref_run = read_run_record(ref_folder, suite) if ref_folder is not None else None
    shard_size = run.settings["shard_size"]
    if ref_run is not None and ref_run.settings["shard_size"] != shard_size:
        raise HarnessError(f"{ref_folder}: shard size {ref_run.settings['shard_size']} differs from {folder}'s {shard_size}")
    out = check_output(out_json, "--out", file=True)
    key = settings_key("score", metrics, dataclasses.asdict(settings), run.key, ref_run.key if ref_run else None)
    done = completed(ScoreResult, out, key)
    if done is not None:
        log.info("score %s / %s: already done with these settings", run.model, suite.name)
        return done

    with quiet_lightning():
        fabric = Fabric(accelerator=runtime.accelerator, devices=runtime.lightning_devices,
                        strategy=runtime.strategy, num_nodes=runtime.num_nodes)
    fabric.launch()
    with closing(shards.read_shard(GenerationFiles(folder).shard(0))) as samples:
        image_shape = next(samples).image.shape
    scorers = [cls(settings, suite, fabric, image_shape) for cls in scorer_classes]
    mine = list(range(shards.shard_count(len(suite), shard_size)))[fabric.global_rank :: fabric.world_size]
    batches = sum(-(-len(shards.shard_ids(i, len(suite), shard_size)) // settings.batch_size) for i in mine)
    for images, records, ref_images in bar(
        _batches(folder, ref_folder, mine, suite, shard_size, settings.batch_size), total=batches,
        desc=f"score {run.model} {suite.name}", disable=not fabric.is_global_zero, unit="batch", leave=False,
    ):
        for scorer in scorers:
            scorer.update(images.to(fabric.device), records,
                          None if ref_images is None else ref_images.to(fabric.device))
    values: dict[str, Any] = {}
    for scorer in scorers:
        values.update(scorer.compute())
    policy, fixed_seed = run.settings["seed_policy"], run.settings["fixed_seed"]
    result = ScoreResult(
        key=key, model=run.model, suite=suite.name, count=len(suite), metrics=values,
        config={
            "metrics": list(metrics),
            "limit": run.limit,
            "score": dataclasses.asdict(settings),
            "shards": str(folder),
            "reference": None if ref_folder is None else str(ref_folder),
            "generation": {"source": run.source, "tensors": [dataclasses.asdict(t) for t in run.tensors],
                           "settings": run.settings, "key": run.key},
        },
        seeds={"policy": policy, "fixed_seed": fixed_seed,
               "per_id": [r.seed if policy == "row" else fixed_seed for r in suite.records]},
        provenance=provenance(),
    )
    if fabric.is_global_zero:
        try:
            write_record(out, result)
        except OSError as error:
            raise HarnessError(f"--out {out}: cannot write ({error.strerror or error})") from None
        log.debug("wrote %s", out)
    fabric.barrier()
    return result


def pilot_suite(folder: Path, suite: Suite) -> Suite:
    """The suite as the folder's images were made: its first N prompts when a pilot (`--limit N`)
    made them and the caller did not cut it (`harness score` on a pilot's folder)."""
    from harness.generate.suites import first

    files = GenerationFiles(folder)
    if suite.limit is not None or not files.record.is_file():
        return suite
    limit = read_record(GenerationRecord, files.record).limit
    return first(suite, limit) if limit is not None else suite


def read_run_record(folder: Path, suite: Suite) -> GenerationRecord:
    """A shard folder's generation record, checked against `suite`, with every shard complete."""
    files = GenerationFiles(folder)
    if not files.record.is_file():
        raise HarnessError(f"{folder}: no {files.record.name} (not a `harness generate` output folder)")
    run = read_record(GenerationRecord, files.record)
    if run.suite != suite.name or run.count != len(suite):
        raise HarnessError(f"{files.record}: holds suite {run.suite} ({run.count} prompts), not {suite.name} ({len(suite)})")
    shard_size = run.settings["shard_size"]
    done = set(shards.complete_shards(folder, len(suite), shard_size))
    missing = [i for i in range(shards.shard_count(len(suite), shard_size)) if i not in done]
    if missing:
        raise HarnessError(f"{folder}: shards {missing[:5]}{'...' if len(missing) > 5 else ''} are missing or incomplete")
    return run


def _batches(
    folder: Path, ref_folder: Path | None, indices: list[int], suite: Suite, shard_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[PromptRecord], torch.Tensor | None]]:
    """(images, records, reference images or None) batches over the given shards, in id order."""
    for index in indices:
        expected = list(shards.shard_ids(index, len(suite), shard_size))
        samples = _shard_samples(GenerationFiles(folder).shard(index), expected)
        refs = _shard_samples(GenerationFiles(ref_folder).shard(index), expected) if ref_folder is not None else None
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = torch.stack([s.image for s in chunk])
            ref_images = None if refs is None else torch.stack([s.image for s in refs[start : start + batch_size]])
            yield images, [suite.records[s.id] for s in chunk], ref_images


def _shard_samples(path: Path, expected: list[int]) -> list[shards.Sample]:
    samples = sorted(shards.read_shard(path), key=lambda s: s.id)
    if [s.id for s in samples] != expected:
        raise HarnessError(f"{path}: does not hold exactly ids {expected[0]}..{expected[-1]}")
    return samples
