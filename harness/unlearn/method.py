"""The interface every unlearning method has, and how a recipe names one.

A method is one decorated function:

    @method("my-method", params=MyParams)          # harness.registry.method
    def my_method(context: UnlearnContext, params: MyParams) -> UnlearnResult: ...

- `params` arrive parsed and checked (before any work) into the declared dataclass; a typo is an
  error naming `methods[i].params.<key>`.
- `context` is a view of the stage's job with what was loaded for it: the pipeline (loaded for
  this method alone: a training method may train its UNet in place; a pruning method reads it),
  the target parameter names (chosen by the entry's `layers`, else the declared default), the
  device, the concept, the generation settings, the seed, the prompt data folder, the fidelity
  setting and a scratch folder for checkpoints with the key of the run's settings.
- The result holds `masks` (name -> bool tensor, True where the method changed a weight) and
  `tensors` (name -> the changed weight), both keyed by parameter names in the model's namespace
  (UNet names; text-encoder parameters as `text_encoder.<name>`: harness.models.components) and
  shaped like the parameter, plus `info`: a JSON-ready record of what the method did (resolved
  params, counts). Every stage applies both components' tensors.

The declaration may add `layers` (glob patterns, the default target layers; else SD_FFN_LAYERS,
ConceptPrune's) and `prunes=True` when the method only zeroes weights: a concept with several
targets then runs it once per target and unites the masks (other methods refuse several targets).
An error a method raises is keyed relative to its entry (`HarnessError("...", key="params.tau")`).

A recipe names a method by a registered name (`conceptprune`, `saliency`, `checkpoint`, ...; see
harness.registry) or by an import path `package.module:function`, so a new method needs no edit
to the harness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import keyed
from harness.registry import Plugin, resolve
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import SD_FFN_LAYERS, ConceptSettings, MethodSettings
from harness.unlearn.job import UnlearnJob
from harness.unlearn.prompts import resolve_data_dir


@dataclass
class UnlearnContext:
    """What a method may use: a view of the job and what the stage loaded for it."""

    job: UnlearnJob
    pipeline: Any
    layers: list[str]
    """The parameter names the method may change (UNet names, `text_encoder.`-prefixed ones)."""
    device: torch.device
    scratch: Path | None = None
    """A folder for training checkpoints; a crashed run resumes from it."""
    settings_key: str = ""
    """The key of the job's settings (checkpoints of other settings are not resumed)."""

    @property
    def concept(self) -> ConceptSettings:
        return self.job.concept

    @property
    def generation(self) -> GenerationSettings:
        return self.job.generation

    @property
    def seed(self) -> int:
        """The recipe's seed (generation.fixed_seed)."""
        return self.job.generation.fixed_seed

    @property
    def fidelity(self) -> str:
        """paper, or reference-code (the authors' published code's behaviour where it differs)."""
        return self.job.fidelity

    @property
    def model(self) -> str:
        """The model source the pipeline was loaded from (a world's `zoo:NAME`, a hub id, a folder)."""
        return self.job.model

    @property
    def runtime(self) -> Any:
        """The stage's RuntimeSettings (devices, strategy, nodes for training methods)."""
        return self.job.runtime

    @property
    def data_dir(self) -> Path | None:
        """The folder of the prompt word lists."""
        return resolve_data_dir(self.job.runtime.data_dir, self.job.concept.data_dir)

    def for_concept(self, concept: ConceptSettings) -> UnlearnContext:
        """The same context for one concept (several targets run one at a time)."""
        return dataclasses.replace(self, job=dataclasses.replace(self.job, concept=concept))


@dataclass
class UnlearnResult:
    """What a method changed: boolean masks and the new weights, by parameter name (UNet names,
    `text_encoder.`-prefixed ones)."""

    masks: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def resolve_method(name: str) -> Plugin:
    """The declared method a registered name or a `package.module:function` import path names."""
    return resolve("method", name)


def call_method(plugin: Plugin, context: UnlearnContext, params: Mapping[str, Any]) -> UnlearnResult:
    """Parse `params` with the method's declared type (errors keyed `params.<key>`) and call it."""
    with keyed("params"):
        parsed = plugin.parse(params)
    return plugin(context, parsed)


def method_layers(entry: MethodSettings) -> list[str]:
    """The layer globs of a recipe's method entry: its own `layers`, else the method's declared
    default, else SD_FFN_LAYERS."""
    if entry.layers is not None:
        return list(entry.layers)
    with keyed("method"):
        declared = resolve_method(entry.method).layers
    return list(declared or SD_FFN_LAYERS)


def check_sampling(params: Any, model: str, generation: Any) -> None:
    """Before any work: a method's params that depend on sampling (ConceptPrune's tau against the
    steps) check themselves through their `preflight(model, generation)`."""
    preflight = getattr(params, "preflight", None)
    if callable(preflight):
        preflight(model, generation)
