"""The attack stage's job: one attack against one unlearned model, into one folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, in_file, keyed
from harness.layout import UnlearnFiles
from harness.models.checkpoints import source_identity
from harness.recipe import Recipe, declared
from harness.records import UnlearnRecord, file_digest, read_record, settings_key
from harness.registry import params_dict, resolve
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings


@dataclass
class AttackJob:
    """One attack against one unlearned model, into one output folder."""

    attack: str
    """The attack's registered name or import path."""
    params: Any
    """Its params, parsed into the attack's declared type."""
    model: str
    """The base model the unlearned tensors apply to (or the whole unlearned model)."""
    unlearned_files: list[Path]
    """Tensor files that make the unlearned model, applied in order on top of `model`."""
    out: Path
    name: str = ""
    """The attack's label (the matrix's column; default: `attack`)."""
    method: str | None = None
    """The label of the attacked method (None for a model given as it is)."""
    layers: list[str] = field(default_factory=list)
    """The parameter names the unlearning method was allowed to change (its unlearn record's)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    fidelity: str = "paper"
    concept: ConceptSettings | None = None
    original: str | None = None
    """The original model, for attacks that declare `original` and for measuring (sign accuracy)."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    source: str = "recipe"
    """The recipe file (errors name it)."""
    entry: str = "attack"
    """The recipe key of the attack's entry (`attacks[0]`)."""
    suites: list[str] = field(default_factory=list)
    """The recipe's prompt suites (for attacks that declare `suites`)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, attack: str | None, unlearned: Path, out: Path,
                    runtime: RuntimeSettings | None = None) -> AttackJob:
        """The job of one of a recipe's attacks (`attack` may be None when the recipe has only one)
        against the unlearn stage's output folder `unlearned`: the layers come from its record."""
        index, entry = recipe.attack(attack)
        files = UnlearnFiles(Path(unlearned))
        if not files.record.is_file():
            raise HarnessError(f"{files.folder}: no {files.record.name}; run the unlearn stage into it first")
        record = read_record(UnlearnRecord, files.record)
        with in_file(recipe.source), keyed(f"attacks[{index}]"):
            _, params = declared("attack", entry.attack, entry.params)
        return cls(attack=entry.attack, params=params, model=recipe.model, unlearned_files=[files.tensors],
                   out=Path(out), name=entry.name or entry.attack, method=record.name,
                   layers=list(record.selected_layers), generation=recipe.generation, fidelity=recipe.fidelity,
                   concept=recipe.concept, original=recipe.model, runtime=runtime or RuntimeSettings(),
                   source=recipe.source, entry=f"attacks[{index}]", suites=list(recipe.suites or []))

    @property
    def label(self) -> str:
        return self.name or self.attack

    def key(self) -> str:
        """The identity of the output: the attack and its params, and the unlearned model's content."""
        concept = dataclasses.asdict(self.concept) | {"data_dir": None} if self.concept else None
        suites = self.suites if "suites" in resolve("attack", self.attack).reads else []
        return settings_key(
            "attack", self.attack, params_dict(self.params), *([suites] if suites else []), source_identity(self.model),
            [file_digest(path) for path in self.unlearned_files], self.layers, dataclasses.asdict(self.generation),
            self.fidelity, concept, source_identity(self.original) if self.original else None,
        )
