"""Generated training sets kept in the harness cache (`samples/`), so that every attack cell that
draws the same attacker data from the same pretrained model (DiMRA's D_au on each method) makes
it once. A set's identity: the drawing model's content identity, the prompts, the generation
settings and the seed; the file holds the samples and, in its metadata, the prompts."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.models.checkpoints import load_tensor_file, save_tensors, source_identity
from harness.records import settings_key
from harness.settings.generate import GenerationSettings

log = logging.getLogger(__name__)


def sample_file(model: str, prompts: list[str], generation: GenerationSettings, seed: int) -> Path:
    """Where the samples of `model` for `prompts` live in the cache."""
    key = settings_key("samples", source_identity(model), prompts, dataclasses.asdict(generation), seed)
    return cache_dir("samples") / f"{key}.safetensors"


def cached_samples(path: Path, prompts: list[str], make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The samples at `path` when it holds them for `prompts`; else `make()`'s, written there."""
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                stored = json.loads((handle.metadata() or {}).get("prompts", "null"))
            if stored == prompts:
                log.info("generated samples: %d from the cache (%s)", len(prompts), path)
                return load_tensor_file(path)["samples"]
        except (HarnessError, OSError, ValueError):
            pass
        log.info("%s: not the samples asked for; making them again", path)
    samples = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors({"samples": samples.contiguous()}, path, metadata={"prompts": json.dumps(prompts)})
    return samples
