"""The plan of one recipe's experiment: the matrix's models (each method with each of its attacks,
Recipe.pairs, and the pretrained model), its suites and shards, and the job of every stage, built from the recipe and
the upstream stage's record. The local runner and the SLURM planner share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.attack.job import AttackJob
from harness.errors import HarnessError, in_file, keyed
from harness.generate import shards
from harness.generate.rewrite import prompt_changes
from harness.generate.run import GenerateJob
from harness.generate.suites import first, load_suite
from harness.layout import NO_ATTACK, PRETRAINED, PRETRAINED_MODEL, ModelRef, RunLayout, suite_name
from harness.recipe import Recipe
from harness.report.run import ReportJob
from harness.runtime import RuntimeSettings
from harness.score.run import ScoreJob
from harness.unlearn.job import UnlearnJob

STAGES = ("unlearn", "attack", "generate", "score", "report")
"""The stages in order; `harness benchmark --stage` and the SLURM jobs take these names."""


@dataclass
class Plan:
    """Paths and work items of one run directory."""

    recipe: Recipe
    layout: RunLayout
    suite_sizes: dict[str, int]
    runtime: RuntimeSettings
    suite_specs: dict[str, str] = field(default_factory=dict)
    """What each suite's name stands for in the recipe where that differs (a prompt file's path)."""

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

    def unlearn_job(self, method: str) -> UnlearnJob:
        """The unlearn stage's job for one method."""
        return UnlearnJob.from_recipe(self.recipe, method, self.layout.unlearn(method).folder, self.runtime)

    def attack_job(self, method: str, attack: str) -> AttackJob:
        """The attack stage's job for one attack on one method's model: the layers are the ones
        the method's unlearn record says it was allowed to change."""
        return AttackJob.from_recipe(self.recipe, attack, self.layout.unlearn(method).folder,
                                     self.layout.attack(method, attack).folder, self.runtime)

    def generate_job(self, model: ModelRef, suite: str, shard: int | None = None) -> GenerateJob:
        """The generate stage's job: one suite (or shard) with one model, with a prompt-space
        attack's new tokens and prompt rewrite."""
        tokens, rewrite = None, None
        if model.method != PRETRAINED and model.attack != NO_ATTACK:
            attack = self.layout.attack(model.method, model.attack)
            tokens, rewrite = prompt_changes(attack.folder)
            if model.step is not None and attack.token_snapshot(model.step).is_file():
                tokens = attack.token_snapshot(model.step)
        return GenerateJob(self.recipe.model, self.layout.model_tensors(model), self.suite(suite),
                           self.recipe.generation, self.layout.images(model, suite).folder, model.label,
                           shard=shard, runtime=self.runtime, tokens=tokens, rewrite=rewrite)

    def score_job(self, model: ModelRef, suite: str) -> ScoreJob:
        """The score stage's job: the suite's metrics of one model's images; the CLIP score
        compares with the pretrained model's."""
        loaded = self.suite(suite)
        reference = self.layout.images(PRETRAINED_MODEL, suite).folder if model != PRETRAINED_MODEL else None
        return ScoreJob(self.layout.images(model, suite).folder, loaded, list(loaded.metrics),
                        self.layout.metrics(model, suite), reference=reference, settings=self.recipe.score,
                        runtime=self.runtime)

    def report_job(self) -> ReportJob:
        """The report stage's job: the run's report folder."""
        return ReportJob([self.run_dir], self.layout.report.folder)

    def suite(self, name: str) -> Any:
        """A suite of the recipe, loaded."""
        with in_file(self.recipe.source), keyed("suites"):
            return first(load_suite(self.suite_specs.get(name, name), self.runtime.data_dir,
                                    self.recipe.generation.fixed_seed), self.recipe.limit)

    def as_dict(self) -> dict[str, Any]:
        """The plan as plain data (for --list-jobs and the SLURM planner)."""
        return {
            "recipe": self.recipe.source,
            "run_dir": str(self.run_dir),
            "methods": [m.name for m in self.recipe.methods],
            "attacks": [a.name for a in self.recipe.attacks],
            "pairs": [f"{method}/{attack}" for method, attack in self.recipe.pairs()],
            "models": [m.label for m in self.models],
            "limit": self.recipe.limit,
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


def build_plan(recipe: Recipe, run_dir: Path, runtime: RuntimeSettings | None = None) -> Plan:
    """The plan for `recipe` in `run_dir`; suite sizes come from the suites themselves."""
    runtime = runtime or RuntimeSettings()
    if not recipe.suites:
        raise HarnessError(f"{recipe.source}: suites: the benchmark needs at least one prompt suite")
    sizes, specs = {}, {}
    with in_file(recipe.source), keyed("suites"):
        for index, spec in enumerate(recipe.suites):
            name = suite_name(spec)
            with keyed(f"[{index}]" if name != spec else ""):
                sizes[name] = len(first(load_suite(spec, runtime.data_dir, recipe.generation.fixed_seed), recipe.limit))
            if name != spec:
                specs[name] = spec
    return Plan(recipe=recipe, layout=RunLayout(Path(run_dir)), suite_sizes=sizes, runtime=runtime, suite_specs=specs)
