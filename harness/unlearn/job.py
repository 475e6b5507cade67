"""The unlearn stage's job: one method of a recipe applied to its base model, into one folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.models.checkpoints import source_identity
from harness.recipe import Recipe
from harness.records import settings_key
from harness.runtime import RuntimeSettings
from harness.settings.generate import GenerationSettings
from harness.settings.unlearn import ConceptSettings, MethodSettings


@dataclass
class UnlearnJob:
    """One method of a recipe applied to its base model, into one output folder."""

    model: str
    """The base model (hub id, folder, zoo:NAME)."""
    concept: ConceptSettings
    method: MethodSettings
    generation: GenerationSettings
    out: Path
    fidelity: str = "paper"
    runtime: RuntimeSettings = dataclasses.field(default_factory=RuntimeSettings)
    """Device, data folder and processes (training methods spread over Lightning's devices)."""
    source: str = "recipe"
    """The recipe file (errors name it)."""
    entry: str = "method"
    """The recipe key of the method's entry (`methods[0]`)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, method: str | None, out: Path,
                    runtime: RuntimeSettings | None = None) -> UnlearnJob:
        """The job of one of a recipe's methods (`method` may be None when the recipe has only one)."""
        index, entry = recipe.method(method)
        assert recipe.concept is not None  # the recipe checks that methods come with a concept
        return cls(model=recipe.model, concept=recipe.concept, method=entry, generation=recipe.generation,
                   out=Path(out), fidelity=recipe.fidelity, runtime=runtime or RuntimeSettings(),
                   source=recipe.source, entry=f"methods[{index}]")

    def key(self) -> str:
        """The identity of the output: base model content, concept, method entry (not which attacks
        run on it, nor whether it is cached), sampling, fidelity."""
        concept = dataclasses.asdict(self.concept) | {"data_dir": None}
        method = {k: v for k, v in dataclasses.asdict(self.method).items() if k not in ("attacks", "cache")}
        return settings_key("unlearn", source_identity(self.model), concept, method,
                            dataclasses.asdict(self.generation), self.fidelity)
