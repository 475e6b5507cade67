"""The interface every attack has, and what its threat model lets it read.

An attack is one decorated function:

    @attack("my-attack", params=MyParams, reads={"concept"})      # harness.registry.attack
    def my_attack(context: AttackContext, params: MyParams) -> AttackResult: ...

`reads` says what it reads beyond the unlearned model:

- `concept`: the erased concept (prompt-space attacks that target it);
- `original`: the original weights (only the ideal-case studies; flagged as such in results);
- `sharded`: it spreads its own work over Accelerate processes (every process calls it);
  an undeclared attack runs on the main process only;
- `suites`: the recipe's prompt suites (a per-prompt attack attacks their prompts of the concept).

What every attack gets: its params, parsed into the declared type before any work; a view of
the stage's job (`context.job`: the base model, the unlearned model's tensor files, the method's
target layer names from its unlearn record, the generation settings, fidelity, runtime) with the
unlearned model (`context.unlearned_state()`, or a loaded `context.pipeline()`), the device, the
seed and a scratch folder. Reading a thing it did not declare is an error.
`context.measurement_original()` gives the original weights for *measuring* an attack (sign
accuracy), never for choosing what it writes. An error it raises is keyed relative to its entry
(`HarnessError("...", key="params.data")`).

The result holds `tensors` (UNet parameters the attack changed, applied on top of the
unlearned model), `info` (a JSON-ready record) and, for the revival family, `revival` (its
per-layer report); a prompt-space attack gives `prompt_rewrite` (how generation changes the
concept's prompts) and `tokens` (new words and their input embeddings the rewrite uses). An
attack that does not apply to a model (nothing pruned to revive) raises `NotApplicable` with the
reason, which the matrix shows in that cell.

A recipe names an attack by a registered name (`nms`, `quant4`, ...; harness.registry) or an
import path `package.module:function`, so a new attack needs no edit to the harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.attack.job import AttackJob
from harness.errors import HarnessError, in_file
from harness.generate.rewrite import PromptRewrite
from harness.models.checkpoints import load_state_dict, load_tensor_file
from harness.models.components import unet_part
from harness.records import ReviveReport
from harness.registry import Plugin, resolve
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings


class NotApplicable(Exception):
    """The attack does not apply to this model; the message says why."""


@dataclass
class AttackResult:
    """What an attack changed, and its record; `snapshots` maps a training step to a tensor
    file of the attacked tensors after it (the points of a recovery curve), `token_snapshots`
    to a file of the new words' embeddings after it (a token attack's curve)."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    revival: ReviveReport | None = None
    snapshots: dict[int, Path] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    token_snapshots: dict[int, Path] = field(default_factory=dict)
    prompt_rewrite: PromptRewrite | None = None


def resolve_attack(name: str) -> Plugin:
    """The declared attack a registered name or a `package.module:function` import path names."""
    return resolve("attack", name)


@dataclass
class AttackContext:
    """What an attack may read: a view of the job and what the stage set up; see the module docstring."""

    job: AttackJob
    device: torch.device
    scratch: Path
    """A folder the attack may write to (checkpoints, parts); it does not outlive the stage's output."""
    reads: frozenset[str]
    accelerator: Any = None
    settings_key: str = ""
    """The key of the job's settings (training checkpoints of other settings are not resumed)."""
    _unlearned: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def model(self) -> str:
        """The base model the unlearned tensors apply to."""
        return self.job.model

    @property
    def unlearned_files(self) -> list[Path]:
        return self.job.unlearned_files

    @property
    def layers(self) -> list[str]:
        """The parameter names the unlearning method was allowed to change."""
        return self.job.layers

    @property
    def generation(self) -> GenerationSettings:
        return self.job.generation

    @property
    def fidelity(self) -> str:
        return self.job.fidelity

    @property
    def seed(self) -> int:
        """The recipe's seed (generation.fixed_seed)."""
        return self.job.generation.fixed_seed

    @property
    def runtime(self) -> Any:
        """The stage's RuntimeSettings (devices, strategy, nodes for training attacks)."""
        return self.job.runtime

    @property
    def data_dir(self) -> str | None:
        return self.job.runtime.data_dir

    def unlearned_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors the unlearning changed (the files' union, later files winning), on the CPU;
        UNet names and `text_encoder.`-prefixed ones (harness.models.components)."""
        tensors: dict[str, torch.Tensor] = {}
        for path in self.unlearned_files:
            tensors.update(load_tensor_file(path))
        return tensors

    def unlearned_state(self) -> dict[str, torch.Tensor]:
        """The unlearned UNet's whole state (base weights with the changed UNet tensors), on the CPU."""
        if self._unlearned is None:
            state = dict(load_state_dict(self.model))
            state.update(unet_part(self.unlearned_tensors()))
            self._unlearned = state
        return self._unlearned

    def pipeline(self, dtype: torch.dtype | None = None) -> Any:
        """The unlearned model as a pipeline on the attack's device."""
        from harness.models.pipelines import apply_tensors, load_pipeline, set_scheduler

        pipeline = load_pipeline(self.model, "cpu", dtype=dtype)
        set_scheduler(pipeline, self.generation.scheduler)
        for path in self.unlearned_files:
            with in_file(path):
                apply_tensors(pipeline, load_tensor_file(path))
        return pipeline.to(self.device)

    def auxiliary_set(self, pipeline: Any, spec: Any, drawn_by_original: bool = False) -> Any:
        """An attacker's training data (a harness.train.data.DataSpec) built for `pipeline` (the
        model that draws a generated set; `drawn_by_original` when it is `original_pipeline()`,
        whose samples the cache then keeps for every cell). The harness, not the attack, keeps
        the erased concept out of it: a world's images of that class are left out, a caption
        naming it is an error, and generated images a classifier names as it are dropped; the
        attack never learns which."""
        from harness.train.data import build_set

        concept = self.job.concept
        exclude = concept.targets if concept else []
        return build_set(pipeline, spec, self.generation, self.model, self.seed, exclude, self.data_dir,
                         concept.kind if concept else None,
                         cached_as=(self.job.original or self.model) if drawn_by_original else None)

    @property
    def concept(self) -> ConceptSettings:
        """The erased concept; only for attacks that declare `concept`."""
        self._require("concept")
        if self.job.concept is None:
            raise HarnessError("the attack needs the recipe's 'concept' section", key="concept", rooted=True)
        if self.job.concept.several:
            raise NotApplicable(f"it learns one concept; the model erases {self.job.concept.label}")
        return self.job.concept

    @property
    def suites(self) -> list[str]:
        """The recipe's prompt suites, in order; only for attacks that declare `suites`."""
        self._require("suites")
        return list(self.job.suites)

    def concept_images(self, pipeline: Any, folder: str | None) -> torch.Tensor:
        """Images of the erased concept in `pipeline`'s input space: the ones in `folder`, else
        a world's held-out real images of it; only for attacks that declare `concept`."""
        from harness.train.data import encode, folder_images, model_size
        from harness.world import world_of_source

        concept = self.concept
        size = model_size(pipeline, self.generation)
        if folder is not None:
            return folder_images(pipeline, folder, size)
        world = world_of_source(self.model)
        found = world.labelled_images("heldout", size) if world is not None else None
        if found is None:
            raise HarnessError(f"name a folder of images of '{concept.target}' (the model is no world's)", key="")
        images, labels = found
        names = {name.lower() for name in world.concept_names(concept.target)}
        keep = [i for i, label in enumerate(labels) if label.lower() in names]
        if not keep:
            raise HarnessError(f"world {world.name} has no held-out images of '{concept.target}'", key="")
        return encode(pipeline, images[keep])

    def original_pipeline(self) -> Any:
        """The original model as a pipeline on the attack's device; only for attacks that declare
        `original` (UnlearnDiff's target images are the original model's)."""
        from harness.models.pipelines import load_pipeline, set_scheduler

        self._require("original")
        pipeline = load_pipeline(self.job.original or self.model, "cpu")
        set_scheduler(pipeline, self.generation.scheduler)
        return pipeline.to(self.device)

    def original_state(self) -> dict[str, torch.Tensor]:
        """The original weights; only for attacks that declare `original` (the ideal cases)."""
        self._require("original")
        return self.measurement_original() or {}

    def measurement_original(self) -> dict[str, torch.Tensor] | None:
        """The original weights for measuring the attack (sign accuracy), or None when not given."""
        return load_state_dict(self.job.original) if self.job.original else None

    def _require(self, what: str) -> None:
        if what not in self.reads:
            raise HarnessError(f"the attack reads '{what}' but does not declare it (@attack(..., reads={{'{what}'}}))",
                               key="attack")
