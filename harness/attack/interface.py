"""The interface every attack has, and what its threat model lets it read.

An attack is a callable

    attack(context: AttackContext, params: dict) -> AttackResult

decorated with `@declares(...)` to say what it reads beyond the unlearned model:

- `concept`: the erased concept (prompt-space attacks that target it);
- `original`: the original weights (only the ideal-case studies; flagged as such in results);
- `sharded`: it spreads its own work over Accelerate processes (every process calls it);
  an undeclared attack runs on the main process only.

What every attack gets: the unlearned model (`context.unlearned_state()`, or a loaded
`context.pipeline()`), the base model's source and the method's target layer names, the
generation settings, the device, seeds, the fidelity setting and a scratch folder. Reading a
thing it did not declare is an error. `context.measurement_original()` gives the original
weights for *measuring* an attack (sign accuracy), never for choosing what it writes.

The result holds `tensors` (UNet parameters the attack changed, applied on top of the
unlearned model), `info` (a JSON-ready record) and, for the revival family, `revival` (its
per-layer report); a prompt-space attack gives `prompt_rewrite` (how generation changes the
concept's prompts) and `tokens` (new words and their input embeddings the rewrite uses). An attack that does not apply to a model (nothing pruned to revive) raises
`NotApplicable` with the reason, which the matrix shows in that cell.

An attack may carry `params_type` (its params dataclass) so that a recipe's params are checked
before any work.

A recipe names an attack by a registered name (`nms`, `quant4`, ...; harness.registry) or an
import path `package.module:function`, so a new attack needs no edit to the harness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.generate.rewrite import PromptRewrite
from harness.recipe import GenerationSettings
from harness.models.checkpoints import load_state_dict, load_tensor_file
from harness.records import ReviveReport
from harness.registry import resolve_callable
from harness.recipe import ConceptSettings

READS = ("concept", "original", "sharded")


class NotApplicable(Exception):
    """The attack does not apply to this model; the message says why."""


@dataclass
class AttackResult:
    """What an attack changed, and its record; `snapshots` maps a training step to a tensor
    file of the attacked tensors after it (the points of a recovery curve)."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    revival: ReviveReport | None = None
    snapshots: dict[int, Path] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    prompt_rewrite: PromptRewrite | None = None


Attack = Callable[["AttackContext", dict], AttackResult]


def declares(*reads: str) -> Callable[[Attack], Attack]:
    """Mark an attack function with what it reads (see the module docstring)."""
    unknown = [r for r in reads if r not in READS]
    if unknown:
        raise ValueError(f"unknown declaration '{unknown[0]}' (choose from {', '.join(READS)})")

    def mark(function: Attack) -> Attack:
        function.reads = frozenset(reads)  # type: ignore[attr-defined]
        return function

    return mark


def attack_reads(attack: Attack) -> frozenset[str]:
    """What an attack declared it reads (nothing, when undeclared)."""
    return frozenset(getattr(attack, "reads", frozenset()))


def resolve_attack(name: str, where: str) -> Attack:
    """The callable for a registered name or a `package.module:function` import path."""
    return resolve_callable("attack", name, where)


@dataclass
class AttackContext:
    """What an attack may read; see the module docstring."""

    base_model: str
    unlearned_files: list[Path]
    """Tensor files that make the unlearned model, applied in order on top of the base model."""
    layers: list[str]
    """Glob patterns of the layers the unlearning method was allowed to change."""
    device: torch.device
    generation: GenerationSettings
    scratch: Path
    """A folder the attack may write to (checkpoints, parts); it does not outlive the stage's output."""
    reads: frozenset[str]
    where: str = "recipe"
    entry: str = "attack"
    fidelity: str = "paper"
    seed: int = 0
    accelerator: Any = None
    concept_settings: ConceptSettings | None = None
    original_source: str | None = None
    settings_key: str = ""
    """The key of the job's settings (training checkpoints of other settings are not resumed)."""
    runtime: Any = None
    """The stage's RuntimeSettings (devices, strategy, nodes for training attacks)."""
    data_dir: str | None = None
    _unlearned: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def key(self, path: str) -> str:
        """An error prefix naming a key of the attack's entry, e.g. 'recipes/x.yaml: attacks[0].params'."""
        return f"{self.where}: {self.entry}.{path}"

    def unlearned_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors the unlearning changed (the files' union, later files winning), on the CPU."""
        tensors: dict[str, torch.Tensor] = {}
        for path in self.unlearned_files:
            tensors.update(load_tensor_file(path))
        return tensors

    def unlearned_state(self) -> dict[str, torch.Tensor]:
        """The unlearned UNet's whole state (base weights with the changed tensors), on the CPU."""
        if self._unlearned is None:
            state = dict(load_state_dict(self.base_model))
            state.update(self.unlearned_tensors())
            self._unlearned = state
        return self._unlearned

    def pipeline(self, dtype: torch.dtype | None = None) -> Any:
        """The unlearned model as a pipeline on the attack's device."""
        from harness.models.pipelines import apply_tensors, load_pipeline, set_scheduler

        pipeline = load_pipeline(self.base_model, "cpu", dtype=dtype)
        set_scheduler(pipeline, self.generation.scheduler, self.where)
        for path in self.unlearned_files:
            apply_tensors(pipeline, load_tensor_file(path), where=str(path))
        return pipeline.to(self.device)

    def auxiliary_set(self, pipeline: Any, spec: Any, where: str) -> Any:
        """An attacker's training data (a harness.train.data.DataSpec) built for `pipeline`. The
        harness, not the attack, keeps the erased concept out of it: a world's images of that
        class are left out, and a caption naming it is an error; the attack never learns which."""
        from harness.train.data import build_set

        exclude = self.concept_settings.targets if self.concept_settings else []
        return build_set(pipeline, spec, self.generation, self.base_model, self.seed, exclude, where, self.data_dir)

    @property
    def concept(self) -> ConceptSettings:
        """The erased concept; only for attacks that declare `concept`."""
        self._require("concept")
        if self.concept_settings is None:
            raise HarnessError(f"{self.where}: the attack needs the recipe's 'concept' section")
        if self.concept_settings.several:
            raise NotApplicable(f"it learns one concept; the model erases {self.concept_settings.label}")
        return self.concept_settings

    def concept_images(self, pipeline: Any, folder: str | None, where: str) -> torch.Tensor:
        """Images of the erased concept in `pipeline`'s input space: the ones in `folder`, else
        a world's held-out real images of it; only for attacks that declare `concept`."""
        from harness.train.data import encode, folder_images, model_size
        from harness.world import world_of_source

        concept = self.concept
        size = model_size(pipeline, self.generation)
        if folder is not None:
            return folder_images(pipeline, folder, size, where)
        world = world_of_source(self.base_model)
        found = world.labelled_images("heldout", size) if world is not None else None
        if found is None:
            raise HarnessError(f"{where}: name a folder of images of '{concept.target}' (the model is no world's)")
        images, labels = found
        names = {name.lower() for name in world.concept_names(concept.target)}
        keep = [i for i, label in enumerate(labels) if label.lower() in names]
        if not keep:
            raise HarnessError(f"{where}: world {world.name} has no held-out images of '{concept.target}'")
        return encode(pipeline, images[keep])

    def original_pipeline(self) -> Any:
        """The original model as a pipeline on the attack's device; only for attacks that declare
        `original` (UnlearnDiff's target images are the original model's)."""
        from harness.models.pipelines import load_pipeline, set_scheduler

        self._require("original")
        pipeline = load_pipeline(self.original_source or self.base_model, "cpu")
        set_scheduler(pipeline, self.generation.scheduler, self.where)
        return pipeline.to(self.device)

    def original_state(self) -> dict[str, torch.Tensor]:
        """The original weights; only for attacks that declare `original` (the ideal cases)."""
        self._require("original")
        return self.measurement_original() or {}

    def measurement_original(self) -> dict[str, torch.Tensor] | None:
        """The original weights for measuring the attack (sign accuracy), or None when not given."""
        return load_state_dict(self.original_source) if self.original_source else None

    def _require(self, what: str) -> None:
        if what not in self.reads:
            raise HarnessError(f"{self.entry}: the attack reads '{what}' but does not declare it (@declares('{what}'))")
