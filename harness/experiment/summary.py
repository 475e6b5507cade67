"""The table the main command prints: the paper's Table 1 in shape (erased-class and
preserved-class accuracy per model), with FID and the revivals' sign accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.experiment.plan import REVIVED_PREFIX, Plan


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _format(value: float | None, digits: int = 3) -> str:
    return "missing" if value is None else f"{value:.{digits}f}"


def summary_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per model: erased and preserved accuracy, FID, sign accuracy (revivals)."""
    target = plan.recipe.concept.target if plan.recipe.concept else None
    rows = []
    for model in plan.models:
        row: dict[str, Any] = {"model": model, "erased": None, "preserved": None, "fid": None, "sign_accuracy": None}
        for suite in plan.suites:
            metrics = (_read(plan.metrics_path(model, suite)) or {}).get("metrics", {})
            per_class = metrics.get("accuracy_per_class") or {}
            if target in per_class:
                row["erased"] = per_class[target]
                others = [v for k, v in per_class.items() if k != target]
                row["preserved"] = sum(others) / len(others) if others else None
            if metrics.get("fid") is not None:
                row["fid"] = metrics["fid"]
        if model.startswith(REVIVED_PREFIX):
            revive = _read(plan.revive_dir(model[len(REVIVED_PREFIX):]) / "report.json") or {}
            row["sign_accuracy"] = revive.get("summary", {}).get("sign_accuracy")
        rows.append(row)
    return rows


def print_summary(plan: Plan) -> None:
    """Print the table to standard output."""
    target = plan.recipe.concept.target if plan.recipe.concept else "?"
    print(f"\n{plan.recipe.name}: erased concept '{target}'")
    rows = summary_rows(plan)
    width = max(len("model"), *(len(row["model"]) for row in rows))
    print(f"{'model':<{width}} {'erased acc':>10} {'preserved acc':>13} {'FID':>9} {'sign acc':>9}")
    for row in rows:
        print(f"{row['model']:<{width}} {_format(row['erased']):>10} {_format(row['preserved']):>13} "
              f"{_format(row['fid'], 2):>9} {_format(row['sign_accuracy']):>9}")
