"""The interface every unlearning method has, and how a recipe names one.

A method is a callable

    method(context: UnlearnContext, params: dict) -> UnlearnResult

- `context` carries the loaded pipeline (loaded for this method alone: a training method may
  train its UNet in place; a pruning method reads it), the target concept, the target parameter
  names (UNet parameter names chosen by the entry's `layers`), the device, the recipe's seed and
  generation settings, the prompt data folder, the fidelity setting, a scratch folder for
  checkpoints with the key of the run's settings, and `where`/`key()` for error messages that
  name the recipe key.
- `params` is the entry's `params` mapping, unparsed: the method validates it itself, usually
  with `harness.config.parse_dataclass(MyParams, params, context.key("params"))`, so that a typo
  is an error naming `methods[i].params.<key>`.
- The result holds `masks` (name -> bool tensor, True where the method changed a weight) and
  `tensors` (name -> the changed weight), both keyed by UNet parameter names and shaped like the
  parameter, plus `info`: a JSON-ready record of what the method did (resolved params, counts).

A method may carry `params_type` (its params dataclass): `harness benchmark` then checks a
recipe's params before any work; `default_layers` (glob patterns), the layers an entry
without `layers` gets (else SD_FFN_LAYERS, ConceptPrune's); and `prunes = True` when it only
zeroes weights: a concept with several targets then runs it once per target and unites the
masks (other methods refuse several targets).

A recipe names a method by a registered name (`conceptprune`, `saliency`, `checkpoint`; see
harness.registry) or by an import path `package.module:function`, so a new method needs no
edit to the harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.recipe import SD_FFN_LAYERS, ConceptSettings, GenerationSettings, MethodSettings
from harness.registry import resolve_callable


@dataclass
class UnlearnContext:
    """Everything a method may use; see the module docstring."""

    pipeline: Any
    concept: ConceptSettings
    layers: list[str]
    device: torch.device
    seed: int
    generation: GenerationSettings
    data_dir: Path | None = None
    where: str = "recipe"
    """The recipe file, for error messages."""
    entry: str = "method"
    """The recipe key of the method's entry (e.g. `methods[0]`)."""
    fidelity: str = "paper"
    """paper, or reference-code (the authors' published code's behaviour where it differs)."""
    base_model: str = ""
    """The model source the pipeline was loaded from (a world's `zoo:NAME`, a hub id, a folder)."""
    scratch: Path | None = None
    """A folder for training checkpoints; a crashed run resumes from it."""
    settings_key: str = ""
    """The key of the job's settings (checkpoints of other settings are not resumed)."""
    runtime: Any = None
    """The stage's RuntimeSettings (devices, strategy, nodes for training methods)."""

    def key(self, path: str) -> str:
        """An error prefix naming a key of the method's entry, e.g. 'recipes/x.yaml: methods[0].params'."""
        return f"{self.where}: {self.entry}.{path}"


@dataclass
class UnlearnResult:
    """What a method changed: boolean masks and the new weights, by UNet parameter name."""

    masks: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


UnlearnMethod = Callable[[UnlearnContext, dict], UnlearnResult]


def resolve_method(name: str, where: str = "method") -> UnlearnMethod:
    """The callable for a registered name or a `package.module:function` import path."""
    return resolve_callable("method", name, where)


def method_layers(entry: MethodSettings, where: str = "method") -> list[str]:
    """The layer globs of a recipe's method entry: its own `layers`, else the method's
    `default_layers`, else SD_FFN_LAYERS."""
    if entry.layers is not None:
        return list(entry.layers)
    return list(getattr(resolve_method(entry.method, where), "default_layers", SD_FFN_LAYERS))
