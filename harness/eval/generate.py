"""Generate a prompt suite's images with a model into WebDataset shards (`harness generate`).

`generate_suite` loads the pipeline in every process, applies changed UNet tensors, and runs a
Lightning predict loop: one process, DDP over CPU processes, GPUs or nodes through Lightning's
usual `accelerator`/`devices`/`strategy`/`num_nodes`. Complete shards are skipped, so a rerun
after a crash redoes only what was missing; `shard=i` runs shard i alone (one SLURM array task).
With `strategy="ddp"` Lightning starts the other processes by re-running the current command,
so call it from a script or the CLI (in a notebook use `ddp_notebook`).

The output folder holds `generation.json` (model, suite, settings, tensors, provenance) and
`shard-*.tar`. Rerunning into a folder made with other settings is an error, never a mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import diffusers
import lightning.pytorch as pl
import torch

from harness.errors import HarnessError
from harness.eval.lightning_warnings import quiet_lightning
from harness.eval import shards
from harness.eval.generation import (
    GenerationModule,
    PromptDataModule,
    ShardSink,
    sample_meta,
)
from harness.eval.manifests import sha256_of
from harness.eval.suites import Suite
from harness.provenance import provenance, write_json_atomic
from harness.recipe import GenerationSettings

log = logging.getLogger(__name__)

RUN_RECORD = "generation.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def generate_suite(
    pipeline_source: str,
    tensors: list[str | Path],
    suite: Suite,
    settings: GenerationSettings,
    out_dir: str | Path,
    model_tag: str,
    shard: int | None = None,
    devices: int | str = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
) -> list[Path]:
    """Generate `suite` with the pipeline at `pipeline_source` (hub id, folder or `zoo:NAME`)
    after writing each safetensors file of `tensors` into its UNet (`apply_tensors`).

    Returns the complete shard paths of the suite (only shard `shard` when given). Raises
    HarnessError on invalid settings, an out-of-range shard, or a folder made otherwise.
    """
    check_settings(settings)
    out = Path(out_dir)
    total = shards.shard_count(len(suite), settings.shard_size)
    if shard is not None and not 0 <= shard < total:
        raise HarnessError(
            f"--shard {shard}: suite {suite.name} has shards 0..{total - 1} (shard size {settings.shard_size})"
        )
    wanted = [shard] if shard is not None else list(range(total))
    dtype = resolve_dtype(settings.dtype, accelerator)
    record = run_record(pipeline_source, tensors, suite, settings, model_tag, dtype)
    check_out_dir(out, record)
    done = set(shards.complete_shards(out, len(suite), settings.shard_size))
    pending = [i for i in wanted if i not in done]
    log.info("suite %s: %d of %d shards complete, %d to generate", suite.name, len(done), total, len(pending))
    if pending:
        pipeline = build_pipeline(pipeline_source, tensors, settings, dtype)
        module = GenerationModule(pipeline, settings, dtype)
        sink = ShardSink(out, suite, settings, sample_meta(model_tag, suite, settings, dtype))
        with quiet_lightning():
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=num_nodes,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                use_distributed_sampler=False,
                callbacks=[sink],
            )
            if trainer.is_global_zero:
                write_json_atomic(out / RUN_RECORD, {**record, "provenance": provenance()})
            trainer.predict(module, datamodule=PromptDataModule(suite, settings, pending), return_predictions=False)
        trainer.strategy.barrier("generated")
    missing = [i for i in wanted if not shards.shard_path(out, i).is_file()]
    if missing:
        raise HarnessError(f"{out}: shards {missing} were not completed")
    return [shards.shard_path(out, i) for i in wanted]


def check_settings(settings: GenerationSettings) -> None:
    """Reject settings no pipeline can run with."""
    for name in ("steps", "batch_size", "shard_size"):
        if getattr(settings, name) < 1:
            raise HarnessError(f"generation.{name}: must be at least 1, got {getattr(settings, name)}")
    for name in ("height", "width"):
        value = getattr(settings, name)
        if value is not None and (value < 8 or value % 8):
            raise HarnessError(f"generation.{name}: must be a multiple of 8, got {value}")
    if settings.guidance < 0:
        raise HarnessError(f"generation.guidance: must not be negative, got {settings.guidance}")
    if settings.scheduler is not None and not _is_scheduler(settings.scheduler):
        raise HarnessError(f"generation.scheduler: '{settings.scheduler}' is not a diffusers scheduler class")


def _is_scheduler(name: str) -> bool:
    cls = getattr(diffusers, name, None)
    return isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)


def resolve_dtype(name: str, accelerator: str) -> torch.dtype:
    """`auto` is float16 on GPUs (the protocol's) and float32 on CPUs."""
    if name != "auto":
        return DTYPES[name]
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.float16 if on_gpu else torch.float32


def build_pipeline(source: str, tensors: list[str | Path], settings: GenerationSettings, dtype: torch.dtype):
    """The pipeline on the CPU in `dtype`, with changed tensors applied and the scheduler set."""
    from harness.models.checkpoints import load_tensor_file
    from harness.models.pipelines import apply_tensors, load_pipeline

    pipeline = load_pipeline(source, device="cpu", dtype=dtype)
    for path in tensors:
        apply_tensors(pipeline, load_tensor_file(path), where=str(path))
    if settings.scheduler is not None:
        pipeline.scheduler = getattr(diffusers, settings.scheduler).from_config(pipeline.scheduler.config)
    return pipeline


def run_record(
    source: str,
    tensors: list[str | Path],
    suite: Suite,
    settings: GenerationSettings,
    model_tag: str,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """What made a folder's images; a rerun must match it (provenance aside)."""
    return {
        "model": model_tag,
        "suite": suite.name,
        "count": len(suite),
        "source": source,
        "tensors": [{"path": str(p), "sha256": sha256_of(Path(p))} for p in tensors],
        "settings": {**dataclasses.asdict(settings), "dtype": str(dtype).removeprefix("torch.")},
        "generator": "torch.Generator('cpu') seeded per image",
    }


_BATCH_FREE = ("batch_size",)


def check_out_dir(out: Path, record: dict[str, Any]) -> None:
    """An existing generation.json must describe the same model, suite and settings. Batch size
    aside: it changes no prompt's seed (only, on some CPU kernels, the rounding of a rare pixel)."""
    path = out / RUN_RECORD
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise HarnessError(f"{path}: not valid JSON; remove the folder to start over") from None
    for key, value in record.items():
        mine, theirs = value, old.get(key)
        if key == "settings" and isinstance(theirs, dict):
            mine = {k: v for k, v in value.items() if k not in _BATCH_FREE}
            theirs = {k: v for k, v in theirs.items() if k not in _BATCH_FREE}
        if mine != theirs:
            raise HarnessError(f"{path}: made with a different {key} ({theirs!r}, now {mine!r}); use another --out")
