"""The plan of one recipe's experiment: the matrix's models (methods x attacks, and the
pretrained model), its suites and shards, and the job of every stage. The local runner and the
SLURM planner share it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.attack.run import AttackJob
from harness.errors import HarnessError
from harness.generate import shards
from harness.layout import ModelRef, RunLayout
from harness.recipe import Recipe
from harness.runtime import RuntimeSettings
from harness.unlearn.method import method_layers
from harness.unlearn.run import UnlearnJob

STAGES = ("unlearn", "attack", "generate", "score", "report")
"""The stages in order; `harness benchmark --stage` and the SLURM jobs take these names."""


@dataclass
class Plan:
    """Paths and work items of one run directory."""

    recipe: Recipe
    layout: RunLayout
    suite_sizes: dict[str, int]

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def models(self) -> list[ModelRef]:
        """Every model the suites are generated with, in report order."""
        return self.recipe.models()

    @property
    def suites(self) -> list[str]:
        return list(self.suite_sizes)

    def shard_count(self, suite: str) -> int:
        return shards.shard_count(self.suite_sizes[suite], self.recipe.generation.shard_size)

    def unlearn_job(self, method: str, runtime: RuntimeSettings) -> UnlearnJob:
        """The unlearn stage's job for one method."""
        return UnlearnJob.from_recipe(self.recipe, method, self.layout.unlearn(method).folder,
                                      runtime.data_dir, runtime.device, runtime)

    def attack_job(self, method: str, attack: str, runtime: RuntimeSettings) -> AttackJob:
        """The attack stage's job for one attack on one method's model."""
        entry = self.recipe.attack(attack)
        method_entry = self.recipe.method(method)
        layers = method_layers(method_entry, f"{self.recipe.source}: methods[{self.recipe.methods.index(method_entry)}].method")
        return AttackJob(
            attack=entry, base_model=self.recipe.model, unlearned_files=[self.layout.unlearn(method).tensors],
            out=self.layout.attack(method, attack).folder, method=method, layers=layers,
            generation=self.recipe.generation, where=self.recipe.source,
            entry=f"attacks[{self.recipe.attacks.index(entry)}]", device=runtime.device,
            fidelity=self.recipe.fidelity, seed=self.recipe.generation.fixed_seed, concept=self.recipe.concept,
            original=self.recipe.model, data_dir=runtime.data_dir, runtime=runtime,
        )

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain data (for --list-jobs and the SLURM planner)."""
        return {
            "recipe": self.recipe.source,
            "run_dir": str(self.run_dir),
            "methods": [m.name for m in self.recipe.methods],
            "attacks": [a.name for a in self.recipe.attacks],
            "models": [m.label for m in self.models],
            "suites": {suite: {"prompts": size, "shards": self.shard_count(suite)} for suite, size in self.suite_sizes.items()},
        }

    def pick_models(self, label: str | None) -> list[ModelRef]:
        """Every model, or the one `label` names (`--model`)."""
        if label is None:
            return self.models
        model = ModelRef.parse(label)
        if model not in self.models:
            raise HarnessError(f"--model '{label}' is not in this plan (choose from {', '.join(m.label for m in self.models)})")
        return [model]


def check_entries(recipe: Recipe) -> None:
    """Every method and attack resolves and its params are valid, before any work: a callable
    with a `params_type` dataclass has its params parsed by it (revival attacks with their preset)."""
    from harness.attack.interface import resolve_attack
    from harness.attack.revival.settings import revival_params
    from harness.config import parse_dataclass
    from harness.unlearn.method import resolve_method

    for index, method in enumerate(recipe.methods):
        function = resolve_method(method.method, f"{recipe.source}: methods[{index}].method")
        if hasattr(function, "params_type"):
            parse_dataclass(function.params_type, method.params, f"{recipe.source}: methods[{index}].params")
        if recipe.concept is not None and recipe.concept.several and not getattr(function, "prunes", False):
            raise HarnessError(f"{recipe.source}: methods[{index}].method: {method.method} erases one concept at a "
                               f"time; concept.target lists {len(recipe.concept.targets)} (only pruning methods unite masks)")
    for index, attack in enumerate(recipe.attacks):
        function = resolve_attack(attack.attack, f"{recipe.source}: attacks[{index}].attack")
        if revival_params(attack, f"{recipe.source}: attacks[{index}].params") is None and hasattr(function, "params_type"):
            parse_dataclass(function.params_type, attack.params, f"{recipe.source}: attacks[{index}].params")


def build_plan(recipe: Recipe, run_dir: Path, data_dir: str | Path | None = None) -> Plan:
    """The plan for `recipe` in `run_dir`; suite sizes come from the suites themselves."""
    from harness.generate.suites import load_suite

    if not recipe.suites:
        raise HarnessError(f"{recipe.source}: suites: the benchmark needs at least one prompt suite")
    check_entries(recipe)
    sizes = {suite: len(load_suite(suite, data_dir, f"{recipe.source}: suites")) for suite in recipe.suites}
    return Plan(recipe=recipe, layout=RunLayout(Path(run_dir)), suite_sizes=sizes)
