"""What the report knows of one run directory, read from its files only: the recipe, the results
rows (collected afresh and written to results.json), the unlearn and attack records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.attack.revival.settings import RevivalParams
from harness.layout import NO_ATTACK, PRETRAINED, ModelRef, RunLayout, require_run_dir
from harness.recipe import Recipe, load_recipe
from harness.records import AttackRecord, ResultRow, Results, UnlearnRecord
from harness.registry import resolve
from harness.report.results import attack_record, collect_results, unlearn_record, write_results


@dataclass
class RunData:
    """One run directory's records; absent files are None."""

    layout: RunLayout
    name: str
    recipe: Recipe | None
    results: Results
    unlearn: dict[str, UnlearnRecord | None]
    """method label -> its unlearn record."""
    attacks: dict[ModelRef, AttackRecord | None]
    """attacked model -> its attack record."""

    @property
    def path(self) -> Path:
        return self.layout.root

    @property
    def models(self) -> list[ModelRef]:
        """Every model of the run, in the matrix's order."""
        return list(dict.fromkeys(ModelRef(r.method, r.attack, r.step) for r in self.results.rows))

    @property
    def suites(self) -> list[str]:
        return list(dict.fromkeys(r.suite for r in self.results.rows))

    @property
    def target(self) -> str | None:
        """The erased concept, from the recipe or an unlearn record."""
        if self.recipe is not None and self.recipe.concept is not None:
            return self.recipe.concept.label
        record = next((r for r in self.unlearn.values() if r is not None), None)
        target = record.concept.get("target") if record else None
        return " + ".join(target) if isinstance(target, list) else target

    @property
    def targets(self) -> list[str]:
        """The erased concepts one by one (`target` joins them)."""
        return self.target.split(" + ") if self.target else []

    @property
    def concept_kind(self) -> str | None:
        if self.recipe is not None and self.recipe.concept is not None:
            return self.recipe.concept.kind
        record = next((r for r in self.unlearn.values() if r is not None), None)
        return record.concept.get("kind") if record else None

    def row(self, model: ModelRef, suite: str) -> ResultRow | None:
        return self.results.row(model.method, model.attack, suite, model.step)

    def metric(self, model: ModelRef, suite: str | None, key: str) -> Any:
        """A scalar or per-class metric of (model, suite), or None when absent."""
        row = self.row(model, suite) if suite else None
        if row is None:
            return None
        return row.fid if key == "fid" else row.metrics.get(key)

    def sigma(self, method: str) -> float | None:
        """sigma_M of a method's Gaussian obfuscation, else None."""
        record = self.unlearn.get(method)
        if record is not None and record.defense is not None:
            return float(record.defense["sigma"])
        if self.recipe is not None:
            entry = next((m for m in self.recipe.methods if m.name == method), None)
            if entry is not None and entry.defense is not None:
                return entry.defense.sigma
        return None

    def revival_settings(self, model: ModelRef) -> dict[str, Any] | None:
        """top_k, magnitude and strategy of a revival attack's model (from its record, else the recipe)."""
        record = self.attacks.get(model)
        if record is not None and record.revival is not None:
            return record.revival.settings
        if self.recipe is not None and model.attack != NO_ATTACK:
            entry = next((a for a in self.recipe.attacks if a.name == model.attack), None)
            plugin = resolve("attack", entry.attack) if entry is not None else None
            if plugin is not None and plugin.params is RevivalParams:
                params = plugin.parse(entry.params)
                return {"top_k": params.top_k, "magnitude": params.magnitude, "strategy": params.strategy}
        return None


def run_recipe(layout: RunLayout) -> Recipe:
    """The run's recipe with the automatic control rows it unlearned (a run made before they
    were added has none)."""
    recipe = load_recipe(layout.recipe, controls=False)
    added = load_recipe(layout.recipe).methods[len(recipe.methods):]
    recipe.methods += [m for m in added if layout.unlearn(m.name).folder.is_dir()]
    return recipe


def load_run(path: str | Path) -> RunData:
    """Read a run directory and write its results.json afresh from its files."""
    layout = require_run_dir(Path(path))
    recipe = run_recipe(layout) if layout.recipe.is_file() else None
    results = collect_results(layout, recipe)
    write_results(layout, results)
    models = list(dict.fromkeys(ModelRef(r.method, r.attack) for r in results.rows))
    methods = list(dict.fromkeys(m.method for m in models if m.method != PRETRAINED))
    unlearn = {method: unlearn_record(layout, method) for method in methods}
    attacks = {m: attack_record(layout, m) for m in models if m.method != PRETRAINED and m.attack != NO_ATTACK}
    attacks |= {m: attacks.get(m.final) for m in (ModelRef(r.method, r.attack, r.step) for r in results.rows)
                if m.step is not None}
    name = recipe.name if recipe is not None else layout.root.name
    return RunData(layout, name, recipe, results, unlearn, attacks)
