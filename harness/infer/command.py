"""`harness infer-concept --unlearned M --candidates SUITE_OR_FILE`: guess which concept an
unlearned model had erased, from its pruned entries alone (harness.infer.ranking).

M is an unlearn stage's output folder (its record names the base model and the sampling
settings; the record's concept is never read), a tensor file of changed UNet weights on top of
--model, or a whole unlearned model (a diffusers folder, a UNet state dict with --model, zoo:NAME).
The ranking is printed best first; --out writes it as a JSON record with the configuration and
versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.config import parse_dataclass, settings_arguments, settings_from_arguments
from harness.errors import HarnessError, in_file, keyed
from harness.infer.ranking import (
    DEFAULT_RULE,
    MIN_SHARE,
    RULES,
    Candidate,
    PrunedLayer,
    Ranking,
    infer_concept,
    load_candidates,
    pruned_layers,
)
from harness.layout import UnlearnFiles
from harness.models.checkpoints import load_state_dict, load_tensor_file
from harness.outputs import check_output
from harness.provenance import provenance, write_json_atomic
from harness.settings.generate import GenerationSettings
from harness.unlearn.activations import TooFewCalls


@dataclass
class InferOptions:
    """What to infer from, and how."""

    unlearned: str
    """unlearned model: an unlearn output folder, a .safetensors/.pt file of UNet tensors (with --model),
    or a whole model (diffusers folder, zoo:NAME)"""
    candidates: str
    """comma-separated prompt suites (one candidate per label) and candidate files (`name: prompt` or a bare prompt a line)"""
    model: str | None = None
    """base model the unlearned tensors apply to (default: the one the unlearn record names)"""
    out: str | None = None
    """JSON file to write the ranking and its configuration to"""
    rule: Literal["nms", "zscore", "zscore-nms", "reenact"] = DEFAULT_RULE
    """the scoring rule printed (the record holds every rule's ranking)"""
    calls: int = 10
    """UNet calls of each generation whose input norms are collected (ConceptPrune's tau)"""
    prompts_per_candidate: int | None = 10
    """at most this many prompts per candidate (none: all)"""
    layers: list[str] = field(default_factory=list)
    """glob patterns of the weights to read pruned entries from (default: every weight with exact zeros)"""
    min_share: float = MIN_SHARE
    """a weight counts as pruned when at least this share of its entries are exact zeros (stray zeros of trained weights stay below)"""
    steps: int | None = None
    """sampling steps (default: the unlearn record's, else 50)"""
    guidance: float | None = None
    """guidance scale (default: the unlearn record's, else 7.5)"""
    batch_size: int | None = None
    """prompts per pipeline call (default: the unlearn record's, else 8)"""
    seed: int = 0
    """seed of a candidate file's first prompt (prompt j: seed + j); suites keep their own seeds"""
    device: str = "auto"
    """torch device: auto, cpu, cuda, cuda:N"""
    data_dir: str | None = None
    """folder of the prompt data files of manifest suites (default $HARNESS_DATA_DIR, else the cache's data/)"""


@dataclass
class UnlearnedModel:
    """Where the unlearned model's weights come from."""

    base: str
    """The model the pipeline is loaded from."""
    tensors: dict[str, torch.Tensor]
    """UNet tensors to write over the base model's (its whole state when the source is a whole model)."""
    generation: GenerationSettings
    """Sampling settings: the unlearn record's, else the defaults with the model's own scheduler."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_flags=settings_arguments(parser, InferOptions))


def load_unlearned(source: str, model: str | None) -> UnlearnedModel:
    """The unlearned model of `--unlearned` (see the module docstring)."""
    path = Path(source).expanduser()
    files = UnlearnFiles(path)
    if path.is_dir() and files.record.is_file():
        record = _read_json(files.record)
        base = model or record.get("model")
        if not base:
            raise HarnessError(f"{files.record}: names no base model; give --model")
        if not files.tensors.is_file():
            raise HarnessError(f"--unlearned {source}: no {files.tensors.name} beside {files.record.name}")
        with in_file(files.record), keyed("generation"):
            generation = parse_dataclass(GenerationSettings, record.get("generation") or {})
        return UnlearnedModel(base, load_tensor_file(files.tensors), generation)
    defaults = GenerationSettings(scheduler=None)
    if path.is_file():
        if not model:
            raise HarnessError(f"--unlearned {source}: a tensor file needs the base model it applies to (--model)")
        return UnlearnedModel(model, load_tensor_file(path), defaults)
    if path.is_dir() and not (path / "model_index.json").is_file() and model is None:
        raise HarnessError(f"--unlearned {source}: neither an unlearn output folder ({files.record.name}) nor a "
                           "pipeline folder (model_index.json)")
    return UnlearnedModel(model or source, load_state_dict(source), defaults)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HarnessError(f"{path}: not a readable record ({error})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: not a record (expected a JSON object)")
    return data


def generation_of(options: InferOptions, unlearned: UnlearnedModel) -> GenerationSettings:
    """The unlearned model's sampling settings with the options' overrides."""
    changes = {k: getattr(options, k) for k in ("steps", "guidance", "batch_size") if getattr(options, k) is not None}
    try:
        return dataclasses.replace(unlearned.generation, **changes)
    except ValueError as error:
        raise HarnessError(f"options: {error}") from None


def run(args: argparse.Namespace) -> int:
    from harness.models.pipelines import apply_tensors, load_pipeline, resolve_dtype, set_scheduler
    from harness.runtime import resolve_device

    options = settings_from_arguments(InferOptions, args, args._flags)
    if options.calls < 1:
        raise HarnessError(f"--calls: must be at least 1, got {options.calls}")
    if options.out:
        check_output(options.out, "--out", file=True)
    start = time.perf_counter()
    candidates = load_candidates(options.candidates, options.data_dir, options.prompts_per_candidate, options.seed)
    unlearned = load_unlearned(options.unlearned, options.model)
    with keyed(f"--unlearned {options.unlearned}"):
        layers = pruned_layers(unlearned.tensors, options.layers, options.min_share)
    generation = generation_of(options, unlearned)
    device = resolve_device(options.device)
    pipeline = load_pipeline(unlearned.base, device, dtype=resolve_dtype(generation.dtype, device))
    set_scheduler(pipeline, generation.scheduler)
    unet_names = set(dict(pipeline.unet.named_parameters()))
    with keyed(f"--unlearned {options.unlearned}"):
        apply_tensors(pipeline, unlearned.tensors)
    missing = [layer.name for layer in layers if layer.name not in unet_names]
    if missing:
        raise HarnessError(f"--unlearned {options.unlearned}: '{missing[0]}' is not a parameter of {unlearned.base}'s UNet")
    try:
        rankings = infer_concept(pipeline, layers, candidates, options.calls, generation)
    except TooFewCalls as error:
        raise HarnessError(f"--calls: {error}") from None
    seconds = time.perf_counter() - start
    print_ranking(rankings[options.rule])
    if options.out:
        write_json_atomic(options.out, infer_record(options, unlearned, layers, candidates, generation, rankings, seconds))
        print(f"wrote {options.out}")
    return 0


def print_ranking(ranking: Ranking) -> None:
    """The ranking as a table, best first."""
    width = max(9, *(len(s.name) for s in ranking.scores))
    print(f"{'rank':>4}  {'candidate':<{width}}  {'score (' + ranking.rule + ')':>18}")
    for score in ranking.scores:
        print(f"{score.rank:>4}  {score.name:<{width}}  {score.score:>18.6g}")


def infer_record(options: InferOptions, unlearned: UnlearnedModel, layers: list[PrunedLayer], candidates: list[Candidate],
                 generation: GenerationSettings, rankings: dict[str, Ranking], seconds: float) -> dict[str, Any]:
    """The JSON record: configuration, what was read, every rule's ranking, provenance."""
    return {
        "options": dataclasses.asdict(options),
        "base_model": unlearned.base,
        "generation": dataclasses.asdict(generation),
        "layers": [{"name": layer.name, "shape": list(layer.shape), "pruned": layer.count, "k": layer.k} for layer in layers],
        "candidates": [{"name": c.name, "prompts": list(c.prompts), "seeds": list(c.seeds)} for c in candidates],
        "rule": options.rule,
        "top": rankings[options.rule].scores[0].name,
        "rankings": {rule: [dataclasses.asdict(s) for s in rankings[rule].scores] for rule in RULES if rule in rankings},
        "seconds": round(seconds, 3),
        "provenance": provenance(),
    }
