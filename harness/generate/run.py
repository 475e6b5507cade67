"""The generate stage: a prompt suite's images with one model, into WebDataset shards.

`run` loads the pipeline in every process, applies changed UNet tensors, and runs a
Lightning predict loop: one process, DDP over CPU processes, GPUs or nodes through Lightning's
usual `accelerator`/`devices`/`strategy`/`num_nodes`. Complete shards are skipped, so a rerun
after a crash redoes only what was missing; `shard=i` runs shard i alone (one SLURM array task).
With `strategy="ddp"` Lightning starts the other processes by re-running the current command,
so call it from a script or the CLI (in a notebook use `ddp_notebook`).

The output folder (harness.layout.GenerationFiles) holds the record (model, suite, settings,
tensors by content, provenance) and the shards. The record's key covers everything an image
depends on; a rerun with another key removes the old shards and generates anew, never a mix.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch

from harness.errors import HarnessError, in_file
from harness.generate import shards
from harness.generate.loop import GenerationModule, PromptDataModule, ShardSink, sample_meta
from harness.generate.rewrite import PromptRewrite
from harness.generate.suites import Suite
from harness.layout import GenerationFiles
from harness.lightning_quiet import interrupt_raised, quiet_lightning
from harness.models.checkpoints import load_tensor_file, source_identity
from harness.models.pipelines import add_tokens, apply_tensors, is_scheduler, load_pipeline, resolve_dtype, set_scheduler
from harness.outputs import check_output
from harness.provenance import provenance
from harness.records import GenerationRecord, TensorIdentity, completed, file_digest, settings_key, write_record
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings

log = logging.getLogger(__name__)

BATCH_FREE = ("batch_size",)
"""Settings that change no prompt's seed (on some CPU kernels only the rounding of a rare pixel)."""
GENERATOR = "torch.Generator('cpu') seeded per image"


@dataclass
class GenerateJob:
    """One suite generated with one model (one shard when given) into one folder of shards."""

    model: str
    """The pipeline: hub id, folder or `zoo:NAME`."""
    tensors: list[Path]
    """Safetensors files of changed UNet tensors, applied in order (`apply_tensors`)."""
    suite: Suite
    generation: GenerationSettings
    out: Path
    tag: str
    """The model's label in the shards' metadata (`pretrained`, `METHOD`, `METHOD/ATTACK`)."""
    shard: int | None = None
    runtime: RuntimeSettings = field(default_factory=lambda: RuntimeSettings(accelerator="cpu"))
    tokens: Path | None = None
    """A prompt-space attack's new tokens (a safetensors file: token -> input embedding)."""
    rewrite: PromptRewrite | None = None
    """A prompt-space attack's change of the concept's prompts, applied first."""


def run(job: GenerateJob) -> GenerationRecord:
    """Generate the job's suite (or shard) and return the folder's record."""
    pipeline_source, settings, shard, runtime = job.model, job.generation, job.shard, job.runtime
    tensors, out_dir, model_tag, tokens, rewrite, suite = job.tensors, job.out, job.tag, job.tokens, job.rewrite, job.suite
    if rewrite is not None:
        suite = rewrite.suite(suite)
    if settings.scheduler is not None and not is_scheduler(settings.scheduler):
        raise HarnessError(f"generation.scheduler: '{settings.scheduler}' is not a diffusers scheduler class")
    missing = [str(p) for p in [*tensors, *([tokens] if tokens else [])] if not Path(p).is_file()]
    if missing:
        raise HarnessError(f"{missing[0]}: no such file (the tensors to apply)")
    files = GenerationFiles(Path(out_dir))
    total = shards.shard_count(len(suite), settings.shard_size)
    if shard is not None and not 0 <= shard < total:
        raise HarnessError(
            f"--shard {shard}: suite {suite.name} has shards 0..{total - 1} (shard size {settings.shard_size})"
        )
    wanted = [shard] if shard is not None else list(range(total))
    dtype = resolve_dtype(settings.dtype, "cuda" if _on_gpu(runtime.accelerator) else "cpu")
    record = run_record(pipeline_source, [Path(p) for p in tensors], suite, settings, model_tag, dtype, tokens)
    _start_folder(files, record)
    pending = _shards_to_make(files, wanted)
    log.debug("generate %s / %s: %d of %d shards to do", model_tag, suite.name, len(pending), total)
    if pending:
        pipeline = build_pipeline(pipeline_source, [Path(p) for p in tensors], settings, dtype, tokens)
        images = sum(len(shards.shard_ids(i, len(suite), settings.shard_size)) for i in pending)
        sink = ShardSink(files.folder, suite, settings, sample_meta(model_tag, suite, settings, dtype), images)
        with quiet_lightning():
            trainer = pl.Trainer(
                accelerator=runtime.accelerator, devices=runtime.lightning_devices, strategy=runtime.strategy,
                num_nodes=runtime.num_nodes, logger=False, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=False, use_distributed_sampler=False, callbacks=[sink],
            )
            with interrupt_raised(trainer):
                trainer.predict(GenerationModule(pipeline, settings, dtype),
                                datamodule=PromptDataModule(suite, settings, pending), return_predictions=False)
        trainer.strategy.barrier("generated")
    missing = [i for i in wanted if not files.shard(i).is_file()]
    if missing:
        raise HarnessError(f"{files.folder}: shards {missing} were not completed")
    return record


def _shards_to_make(files: GenerationFiles, wanted: list[int]) -> list[int]:
    """The wanted shards not on disk as they were written; a shard changed since (its size or
    sha256 differs from the recorded ones, or none were recorded) is removed, to be made again."""
    pending = []
    for index in wanted:
        reason = shards.changed(files.folder, index)
        if reason is None:
            continue
        if files.shard(index).is_file():
            log.warning("%s: %s; making it again", files.shard(index), reason)
            files.shard(index).unlink(missing_ok=True)
        pending.append(index)
    return pending


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _start_folder(files: GenerationFiles, record: GenerationRecord) -> None:
    """Make the folder hold `record`: keep it when its key matches, else drop the old shards."""
    check_output(files.folder, "--out", lambda folder: GenerationFiles(folder).record.is_file() or bool(GenerationFiles(folder).shards()))
    previous = completed(GenerationRecord, files.record, record.key)
    if previous is None:
        stale = files.shards()
        if files.record.is_file() or stale:
            log.info("%s: made with other settings or inputs; generating anew (%d old shards removed)",
                     files.folder, len(stale))
        for path in stale + files.digests():
            path.unlink(missing_ok=True)
        try:
            files.folder.mkdir(parents=True, exist_ok=True)
            write_record(files.record, record)
        except OSError as error:
            raise HarnessError(f"--out {files.folder}: cannot write there ({error.strerror or error})") from None
    shards.clear_stale_partials(files.folder)


def build_pipeline(source: str, tensors: list[Path], settings: GenerationSettings, dtype: torch.dtype,
                   tokens: Path | None = None):
    """The pipeline on the CPU in `dtype`, with changed tensors applied, new tokens added and the
    scheduler set."""
    pipeline = load_pipeline(source, device="cpu", dtype=dtype)
    for path in tensors:
        with in_file(path):
            apply_tensors(pipeline, load_tensor_file(path))
    if tokens is not None:
        with in_file(tokens):
            add_tokens(pipeline, load_tensor_file(tokens))
    set_scheduler(pipeline, settings.scheduler)
    return pipeline


def run_record(
    source: str, tensors: list[Path], suite: Suite, settings: GenerationSettings, model_tag: str, dtype: torch.dtype,
    tokens: Path | None = None,
) -> GenerationRecord:
    """What makes a folder's images. The key covers the model's name (each image records it), its
    content (not its paths), the suite's prompts and seeds and the sampling settings (batch size
    aside)."""
    identities = [TensorIdentity(str(p), file_digest(p)) for p in [*tensors, *([tokens] if tokens else [])]]
    settings_record = {**dataclasses.asdict(settings), "dtype": str(dtype).removeprefix("torch.")}
    prompts = [(r.prompt, r.seed, r.guidance, r.label) for r in suite.records]
    parts = [model_tag, source_identity(source), [t.sha256 for t in identities], suite.name, prompts,
             {k: v for k, v in settings_record.items() if k not in BATCH_FREE}, GENERATOR]
    if suite.limit is not None:  # a pilot's images never pass for a whole suite's
        parts.append({"limit": suite.limit})
    key = settings_key("generate", *parts)
    return GenerationRecord(key=key, model=model_tag, suite=suite.name, count=len(suite), source=source,
                            source_identity=source_identity(source), tensors=identities, settings=settings_record,
                            generator=GENERATOR, provenance=provenance(), limit=suite.limit)
