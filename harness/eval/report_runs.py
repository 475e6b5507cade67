"""What the report knows of one run directory, read from its files only.

A run directory holds `recipe.yaml`, `unlearn/unlearn.json`, `revive/<variant>/report.json` and
`metrics/<model>/<suite>.json` (see README). Whatever the recipe promises but the folder lacks
stays None here, so the tables can mark it missing instead of filling it in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.experiment.plan import PRETRAINED, REVIVED_PREFIX, UNLEARNED, variant_settings
from harness.recipe import AttackSettings, Recipe, load_recipe


@dataclass
class RunData:
    """One run directory's records; absent files are None."""

    path: Path
    name: str
    recipe: Recipe | None
    unlearn: dict[str, Any] | None
    revive: dict[str, dict[str, Any] | None]
    """variant -> its report.json (None when the recipe names it but it is not there)."""
    metrics: dict[tuple[str, str], dict[str, Any]]
    """(model, suite) -> the metrics JSON."""
    models: list[str]
    suites: list[str]
    settings: dict[str, AttackSettings] = field(default_factory=dict)
    """variant -> its attack settings (from the recipe, else its report.json)."""

    @property
    def target(self) -> str | None:
        """The erased concept, from the recipe or unlearn.json."""
        if self.recipe is not None and self.recipe.concept is not None:
            return self.recipe.concept.target
        concept = (self.unlearn or {}).get("concept") or {}
        return concept.get("target")

    @property
    def concept_kind(self) -> str | None:
        if self.recipe is not None and self.recipe.concept is not None:
            return self.recipe.concept.kind
        return ((self.unlearn or {}).get("concept") or {}).get("kind")

    @property
    def sigma(self) -> float | None:
        """The defense's sigma_M when the unlearned model was obfuscated, else None."""
        defense = (self.unlearn or {}).get("defense")
        if defense is not None:
            return float(defense["sigma"])
        if self.recipe is not None and self.recipe.unlearn is not None and self.recipe.unlearn.defense is not None:
            return self.recipe.unlearn.defense.sigma
        return None

    @property
    def variants(self) -> list[str]:
        return [m[len(REVIVED_PREFIX):] for m in self.models if m.startswith(REVIVED_PREFIX)]

    def metric(self, model: str, suite: str, key: str) -> Any:
        """`metrics[key]` of (model, suite), or None when the file or the key is absent."""
        record = self.metrics.get((model, suite))
        return None if record is None else record.get("metrics", {}).get(key)

    def suite_count(self, suite: str) -> int | None:
        """The number of images scored for `suite` (from any model's metrics)."""
        counts = [r.get("count") for (m, s), r in self.metrics.items() if s == suite and r.get("count")]
        return max(counts) if counts else None


def load_run(path: str | Path) -> RunData:
    """Read a run directory; a folder with neither recipe.yaml nor metrics/ is a HarnessError."""
    path = Path(path)
    if not path.is_dir():
        raise HarnessError(f"{path}: run directory not found")
    recipe_file = path / "recipe.yaml"
    recipe = load_recipe(recipe_file) if recipe_file.is_file() else None
    if recipe is None and not (path / "metrics").is_dir():
        raise HarnessError(f"{path}: not a run directory (no recipe.yaml and no metrics/)")
    unlearn = _read_json(path / "unlearn" / "unlearn.json")

    variants = [v.name for v in recipe.variants] if recipe is not None else []
    found_variants = sorted(p.parent.name for p in (path / "revive").glob("*/report.json"))
    variants += [v for v in found_variants if v not in variants]
    revive = {v: _read_json(path / "revive" / v / "report.json") for v in variants}

    metrics: dict[tuple[str, str], dict[str, Any]] = {}
    for file in sorted((path / "metrics").glob("*/*.json")):
        metrics[(file.parent.name, file.stem)] = _read_json(file)
    models = [PRETRAINED, UNLEARNED, *(REVIVED_PREFIX + v for v in variants)]
    models += sorted({m for m, _ in metrics} - set(models))
    suites = list(recipe.suites) if recipe is not None else []
    suites += sorted({s for _, s in metrics} - set(suites))

    settings = variant_settings(recipe, path / "unlearn" / "unlearned.safetensors") if recipe is not None else {}
    for variant, report in revive.items():
        if variant not in settings and report is not None and "settings" in report:
            known = {k: report["settings"][k] for k in ("top_k", "magnitude", "strategy") if k in report["settings"]}
            try:
                settings[variant] = AttackSettings(**known)
            except (TypeError, ValueError) as error:
                raise HarnessError(f"{path / 'revive' / variant / 'report.json'}: settings: {error}") from None
    name = recipe.name if recipe is not None else path.name
    return RunData(path, name, recipe, unlearn, revive, metrics, models, suites, settings)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HarnessError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a JSON object")
    return data
