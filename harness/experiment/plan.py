"""The plan of one recipe's benchmark: which revivals, models, suites and shards, and where
every file goes in the run directory. The local runner and the SLURM planner share it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.eval import shards
from harness.recipe import AttackSettings, Recipe

PRETRAINED = "pretrained"
UNLEARNED = "unlearned"
REVIVED_PREFIX = "revived-"


@dataclass
class Plan:
    """Paths and work items of one run directory."""

    recipe: Recipe
    run_dir: Path
    variants: dict[str, AttackSettings]
    suite_sizes: dict[str, int]

    @property
    def models(self) -> list[str]:
        """Every model the suites are generated with, in report order."""
        return [PRETRAINED, UNLEARNED, *(REVIVED_PREFIX + name for name in self.variants)]

    @property
    def suites(self) -> list[str]:
        return list(self.suite_sizes)

    @property
    def unlearn_dir(self) -> Path:
        return self.run_dir / "unlearn"

    @property
    def unlearned_tensors(self) -> Path:
        """The changed tensors of the unlearned model (or the given unlearned model itself)."""
        if self.recipe.unlearn is None:
            return Path(self.recipe.attack.unlearned)
        return self.unlearn_dir / "unlearned.safetensors"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    def revive_dir(self, variant: str) -> Path:
        return self.run_dir / "revive" / variant

    def shard_count(self, suite: str) -> int:
        return shards.shard_count(self.suite_sizes[suite], self.recipe.generation.shard_size)

    def images_dir(self, model: str, suite: str) -> Path:
        return self.run_dir / "images" / model / suite

    def shard_path(self, model: str, suite: str, index: int) -> Path:
        return shards.shard_path(self.images_dir(model, suite), index)

    def metrics_path(self, model: str, suite: str) -> Path:
        return self.run_dir / "metrics" / model / f"{suite}.json"

    def model_tensors(self, model: str) -> list[Path]:
        """Tensor files applied on top of the base model to get `model`."""
        if model == PRETRAINED:
            return []
        if model == UNLEARNED:
            return [self.unlearned_tensors]
        if model.startswith(REVIVED_PREFIX) and model[len(REVIVED_PREFIX):] in self.variants:
            return [self.revive_dir(model[len(REVIVED_PREFIX):]) / "revived.safetensors"]
        raise HarnessError(f"unknown model '{model}' (choose from {', '.join(self.models)})")

    def as_dict(self) -> dict:
        """The plan as plain data (for --list-jobs and the SLURM planner)."""
        return {
            "recipe": self.recipe.source,
            "run_dir": str(self.run_dir),
            "variants": list(self.variants),
            "models": self.models,
            "suites": {suite: {"prompts": size, "shards": self.shard_count(suite)} for suite, size in self.suite_sizes.items()},
        }


def variant_settings(recipe: Recipe, unlearned: Path) -> dict[str, AttackSettings]:
    """Each variant's attack settings: the recipe's attack with the variant's changes."""
    variants: dict[str, AttackSettings] = {}
    for variant in recipe.variants:
        if variant.name in variants or "/" in variant.name:
            raise HarnessError(f"{recipe.source}: variants: name '{variant.name}' is repeated or has a '/'")
        changes = {k: v for k, v in dataclasses.asdict(variant).items() if k != "name" and v is not None}
        try:
            variants[variant.name] = dataclasses.replace(
                recipe.attack, unlearned=str(unlearned), original=recipe.attack.original or recipe.model, **changes
            )
        except ValueError as error:
            raise HarnessError(f"{recipe.source}: variants: {variant.name}: {error}") from None
    return variants


def build_plan(recipe: Recipe, run_dir: Path, data_dir: str | Path | None = None) -> Plan:
    """The plan for `recipe` in `run_dir`; suite sizes come from the suites' manifests."""
    from harness.eval.suites import load_suite

    if recipe.unlearn is None and not recipe.attack.unlearned:
        raise HarnessError(f"{recipe.source}: needs an 'unlearn' section or 'attack.unlearned'")
    run_dir = Path(run_dir)
    plan = Plan(recipe=recipe, run_dir=run_dir, variants={}, suite_sizes={})
    plan.variants = variant_settings(recipe, plan.unlearned_tensors)
    for name, settings in plan.variants.items():
        settings.out = str(plan.revive_dir(name))
    plan.suite_sizes = {suite: len(load_suite(suite, data_dir)) for suite in recipe.suites}
    return plan
