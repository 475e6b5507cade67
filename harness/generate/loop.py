"""The Lightning pieces of generation: a DataModule of prompt records, a LightningModule whose
predict step drives a diffusers pipeline, and a callback that writes images to shards.

Batches never cross a shard: each shard's ids are grouped by guidance scale (one per pipeline
call) and cut into `batch_size` chunks from the shard's first id. Whole shards are dealt to
processes in turn, so a batch holds the same prompts whatever the number of processes or nodes,
and every image's noise comes from a CPU generator seeded from its own record.

So the images are byte-identical for any number of processes or nodes on the same kind of
device (on CPUs, with the same threads per process: Lightning's CPU DDP sets OMP_NUM_THREADS
to cores / processes unless it is set). Another batch size draws the same noise, but some
PyTorch kernels (oneDNN convolutions, channels-last GroupNorm) round by batch shape, which can
move a rare pixel by one level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from diffusers import DiffusionPipeline
from torch.utils.data import DataLoader, Sampler

from harness.generate import shards
from harness.generate.suites import PromptRecord, Suite
from harness.progress import bar
from harness.settings.generate import GenerationSettings

log = logging.getLogger(__name__)


def effective_seed(record: PromptRecord, settings: GenerationSettings) -> int:
    """The seed an image is drawn with under the settings' seed policy."""
    return record.seed if settings.seed_policy == "row" else settings.fixed_seed


def effective_guidance(record: PromptRecord, settings: GenerationSettings) -> float:
    """The guidance scale under the settings' guidance policy."""
    if settings.guidance_policy == "row" and record.guidance is not None:
        return record.guidance
    return settings.guidance


def plan_batches(suite: Suite, settings: GenerationSettings, shard_indices: list[int]) -> list[list[int]]:
    """Lists of prompt ids, one per pipeline call, for the given shards in order."""
    batches: list[list[int]] = []
    for index in shard_indices:
        groups: dict[float, list[int]] = {}
        for prompt_id in shards.shard_ids(index, len(suite), settings.shard_size):
            groups.setdefault(effective_guidance(suite.records[prompt_id], settings), []).append(prompt_id)
        for ids in groups.values():
            batches.extend(ids[i : i + settings.batch_size] for i in range(0, len(ids), settings.batch_size))
    return batches


class _FixedBatches(Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [item[key] for item in items] for key in items[0]}


class PromptDataModule(pl.LightningDataModule):
    """Prompt records of the pending shards; each process takes every world_size-th shard."""

    def __init__(self, suite: Suite, settings: GenerationSettings, pending: list[int]) -> None:
        super().__init__()
        self.suite = suite
        self.settings = settings
        self.pending = pending
        self.batches: list[list[int]] = []

    def setup(self, stage: str) -> None:
        pending = self.trainer.strategy.broadcast(self.pending, src=0)
        mine = pending[self.trainer.global_rank :: self.trainer.world_size]
        self.batches = plan_batches(self.suite, self.settings, mine)
        log.debug(
            "process %d of %d: %d shards, %d batches",
            self.trainer.global_rank,
            self.trainer.world_size,
            len(mine),
            len(self.batches),
        )

    def predict_dataloader(self) -> DataLoader:
        items = [
            {
                "id": r.id,
                "prompt": r.prompt,
                "seed": effective_seed(r, self.settings),
                "guidance": effective_guidance(r, self.settings),
            }
            for r in self.suite.records
        ]
        return DataLoader(items, batch_sampler=_FixedBatches(self.batches), collate_fn=_collate, num_workers=0)


class GenerationModule(pl.LightningModule):
    """Drives a diffusers text-to-image pipeline; returns uint8 images (N, C, H, W) on the CPU."""

    def __init__(self, pipeline: DiffusionPipeline, settings: GenerationSettings, dtype: torch.dtype) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.settings = settings
        self.pipeline_dtype = dtype

    def on_predict_start(self) -> None:
        self.pipeline.to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)

    def predict_step(self, batch: dict[str, list[Any]], batch_idx: int) -> torch.Tensor:
        output = self.pipeline(**self.settings.pipeline_kwargs(batch["prompt"], batch["seed"], batch["guidance"][0]))
        images = output.images
        return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class ShardSink(pl.Callback):
    """Writes each batch's images with their records into the shard their ids belong to."""

    def __init__(self, out_dir: Path, suite: Suite, settings: GenerationSettings, meta: dict[str, Any],
                 images: int) -> None:
        self.out_dir = Path(out_dir)
        self.suite = suite
        self.settings = settings
        self.meta = meta
        self.images = images
        self.writer: shards.ShardWriter | None = None
        self.committed: list[Path] = []
        self.progress: Any = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress = bar(total=self.images, desc=f"generate {self.meta['model']} {self.suite.name}",
                             unit="image", disable=not trainer.is_global_zero, leave=False)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: torch.Tensor,
        batch: dict[str, list[Any]],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for image, prompt_id, seed, guidance in zip(outputs, batch["id"], batch["seed"], batch["guidance"]):
            index = prompt_id // self.settings.shard_size
            if self.writer is None or self.writer.index != index:
                self.writer = shards.ShardWriter(
                    self.out_dir, index, shards.shard_ids(index, len(self.suite), self.settings.shard_size)
                )
            record = self.suite.records[prompt_id]
            self.writer.write(
                prompt_id,
                shards.encode_png(image),
                {
                    "id": prompt_id,
                    "prompt": record.prompt,
                    "label": record.label,
                    "seed": seed,
                    "guidance": guidance,
                    "size": list(image.shape[1:]),
                    **self.meta,
                },
            )
            if self.writer.done:
                self.committed.append(self.writer.commit())
                log.debug("wrote %s", self.committed[-1])
                self.writer = None
        if self.progress is not None:
            self.progress.update(len(outputs))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        if self.progress is not None:
            self.progress.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.on_predict_end(trainer, pl_module)


def sample_meta(model_tag: str, suite: Suite, settings: GenerationSettings, dtype: torch.dtype) -> dict[str, Any]:
    """What every sample's record carries besides its own prompt, seed and guidance."""
    return {
        "model": model_tag,
        "suite": suite.name,
        "settings": {**asdict(settings), "dtype": str(dtype).removeprefix("torch.")},
    }
