"""`results.json`: one row per method x attack x suite, collected from a run directory's files.

Each row holds the erased class's accuracy and the other classes' (pooled) with their n and
95% Wilson intervals, FID, the suite's other scalar metrics and the attack's sign accuracy; a
cell without numbers says why (not applicable, or which file is missing). The rows carry the
recipe, the package versions and the seeds that made them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.layout import NO_ATTACK, PRETRAINED, ModelRef, RunLayout, suite_name
from harness.provenance import package_versions, provenance
from harness.recipe import Recipe
from harness.records import (
    AttackRecord,
    ResultRow,
    Results,
    ScoreResult,
    UnlearnRecord,
    normalise_label,
    read_record,
    write_record,
)
from harness.report.controls import control_verdicts
from harness.stats import wilson_interval

log = logging.getLogger(__name__)

PER_CLASS_KEYS = ("accuracy_per_class", "accuracy_counts_per_class")


def collect_results(layout: RunLayout, recipe: Recipe | None) -> Results:
    """The run's rows from its files (nothing is filled in)."""
    scored = layout.scored()
    models = [m for model in (recipe.models() if recipe is not None else []) for m in (model, *snapshot_models(layout, model))]
    models += sorted({m for m, _ in scored} - set(models), key=lambda m: m.label)
    suites = [suite_name(suite) for suite in recipe.suites or []] if recipe is not None else []
    suites += sorted({s for _, s in scored} - set(suites))
    targets = recipe.concept.targets if recipe is not None and recipe.concept is not None else None
    rows = [result_row(layout, model, suite, targets) for model in models for suite in suites]
    mark_rising_curves(rows)
    recipe_data = _recipe_data(recipe)
    suite = Results(recipe=recipe_data, versions={}, seeds={}, rows=rows, provenance={}).erased_suite()
    return Results(
        recipe=recipe_data,
        versions=package_versions(),
        seeds=_seeds(layout, recipe),
        rows=rows,
        provenance=provenance(),
        controls=control_verdicts(recipe_data, rows, suite),
    )


def result_row(layout: RunLayout, model: ModelRef, suite: str, targets: list[str] | None) -> ResultRow:
    """One cell: its numbers from the metrics file, or why there are none; with several erased
    concepts the erased accuracy pools them and `metrics.erased_per_concept` holds each one's."""
    row = ResultRow(method=model.method, attack=model.attack, step=model.step, suite=suite, erased_accuracy=None,
                    preserved_accuracy=None, n_erased=0, n_preserved=0, erased_ci=None, preserved_ci=None,
                    fid=None, status="done")
    attack = attack_record(layout, model)
    if attack is not None and not attack.applicable:
        row.status = f"not applicable: {attack.reason}"
        return row
    path = layout.metrics(model, suite)
    if not path.is_file():
        row.status = f"missing: {path.relative_to(layout.root)}"
        return row
    score = read_record(ScoreResult, path)
    row.n_images = score.count
    counts = score.class_counts(targets)
    if counts.erased is not None:
        row.erased_accuracy, row.n_erased, row.erased_ci = _share(*counts.erased)
    if counts.preserved is not None:
        row.preserved_accuracy, row.n_preserved, row.preserved_ci = _share(*counts.preserved)
    fid = score.metrics.get("fid")
    row.fid = float(fid) if isinstance(fid, (int, float)) else None
    row.metrics = {k: v for k, v in score.metrics.items() if k != "fid" and k not in PER_CLASS_KEYS}
    if targets and len(targets) > 1:
        row.metrics["erased_per_concept"] = per_concept(score, targets)
    if attack is not None and attack.revival is not None:
        row.metrics["sign_accuracy"] = attack.revival.summary.sign_accuracy
    if attack is not None and model.step is None:
        row.budget = attack.info.get("budget")
        shares = [p["share"] for p in attack.info.get("curve", []) if p.get("share") is not None]
        if len(shares) > 1:
            row.rising = shares[-1] > max(shares[:-1])
    return row


def mark_rising_curves(rows: list[ResultRow]) -> None:
    """Set `rising` on each training attack's final row that has curve points: the curve runs
    from the unattacked model (step 0) through the snapshots to the final model, and it is rising
    when the final share is above every earlier point's."""
    shares = {(r.method, r.attack, r.suite, r.step): r.erased_accuracy for r in rows if r.erased_accuracy is not None}
    for row in rows:
        if row.step is not None or row.erased_accuracy is None or row.rising is not None:
            continue
        points = [v for (m, a, s, step), v in shares.items() if (m, a, s) == (row.method, row.attack, row.suite)
                  and step is not None]
        if points:
            start = shares.get((row.method, NO_ATTACK, row.suite, None))
            earlier = [*points, *([start] if start is not None else [])]
            row.rising = row.erased_accuracy > max(earlier)


def per_concept(score: ScoreResult, targets: list[str]) -> dict[str, dict[str, Any]]:
    """Each erased concept's accuracy with its n and 95% Wilson interval."""
    counts = score.per_class_counts()
    found = {t: counts[normalise_label(t)] for t in targets if normalise_label(t) in counts}
    return {t: dict(zip(("accuracy", "n", "ci"), _share(*c))) for t, c in found.items()}


def attack_record(layout: RunLayout, model: ModelRef) -> AttackRecord | None:
    """The record of the attack that made `model`, when it is an attacked model and present."""
    if model.method == PRETRAINED or model.attack == NO_ATTACK:
        return None
    path = layout.attack(model.method, model.attack).record
    return read_record(AttackRecord, path) if path.is_file() else None


def snapshot_models(layout: RunLayout, model: ModelRef) -> list[ModelRef]:
    """The snapshots a training attack wrote along the way (its recovery curve's points)."""
    record = attack_record(layout, model) if model.step is None else None
    steps = record.info.get("snapshots", []) if record is not None and record.applicable else []
    return [ModelRef(model.method, model.attack, int(step)) for step in steps]


def unlearn_record(layout: RunLayout, method: str) -> UnlearnRecord | None:
    """A method's unlearn record, when present."""
    path = layout.unlearn(method).record
    return read_record(UnlearnRecord, path) if path.is_file() else None


def _share(correct: int, n: int) -> tuple[float | None, int, list[float] | None]:
    interval = wilson_interval(correct, n)
    return (correct / n if n else None), n, (list(interval) if interval else None)


def _recipe_data(recipe: Recipe | None) -> dict[str, Any]:
    return dataclasses.asdict(recipe) if recipe is not None else {}


def _seeds(layout: RunLayout, recipe: Recipe | None) -> dict[str, Any]:
    if recipe is None:
        return {}
    methods = {}
    for method in recipe.methods:
        try:
            record = unlearn_record(layout, method.name)
        except HarnessError as error:
            log.warning("%s", error)
            record = None
        methods[method.name] = record.seeds if record is not None else None
    return {
        "generation": {"policy": recipe.generation.seed_policy, "fixed_seed": recipe.generation.fixed_seed},
        "methods": methods,
        "attacks": {a.name: a.params.get("seed", 0) for a in recipe.attacks},
    }


def write_results(layout: RunLayout, results: Results) -> Path:
    """Write `results.json` atomically."""
    return write_record(layout.results, results)
