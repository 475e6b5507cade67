"""Unlearning methods by name: the signature every method has, and how a recipe names one.

A method is a callable

    method(context: UnlearnContext, params: dict) -> UnlearnResult

- `context` carries the loaded pipeline (not to be changed by the method), the target concept,
  the target parameter names (UNet parameter names chosen by `unlearn.layers`), the device,
  the recipe's seed and generation settings, the prompt data folder, and `where` (the recipe
  file) for error messages.
- `params` is the recipe's `unlearn.params` mapping, unparsed: the method validates it itself,
  usually with `harness.config.parse_dataclass(MyParams, params, context.key("unlearn.params"))`,
  so that a typo is an error naming `unlearn.params.<key>`.
- The result holds `masks` (name -> bool tensor, True where the method changed a weight) and
  `tensors` (name -> the changed weight), both keyed by UNet parameter names and shaped like the
  parameter, plus `info`: a JSON-ready record of what the method did (resolved params, counts).

A recipe names a method by a registered name (`conceptprune`, `saliency`) or by an import path
`package.module:function`, so a new method needs no edit to the harness.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.errors import HarnessError
from harness.recipe import ConceptSettings, GenerationSettings

REGISTERED = {
    "conceptprune": "harness.unlearn.conceptprune:conceptprune",
    "saliency": "harness.unlearn.saliency:saliency",
}


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

    def key(self, path: str) -> str:
        """An error prefix naming a recipe key, e.g. 'recipes/x.yaml: unlearn.params'."""
        return f"{self.where}: {path}"


@dataclass
class UnlearnResult:
    """What a method changed: boolean masks and the new weights, by UNet parameter name."""

    masks: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


UnlearnMethod = Callable[[UnlearnContext, dict], UnlearnResult]


def resolve_method(name: str, where: str = "unlearn.method") -> UnlearnMethod:
    """The callable for a registered name or a `package.module:function` import path."""
    path = REGISTERED.get(name, name)
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise HarnessError(
            f"{where}: unknown method '{name}' (registered: {', '.join(REGISTERED)}; "
            "or give an import path package.module:function)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HarnessError(f"{where}: cannot import module '{module_name}' ({error})") from None
    method = getattr(module, attribute, None)
    if not callable(method):
        raise HarnessError(f"{where}: module '{module_name}' has no callable '{attribute}'")
    return method
