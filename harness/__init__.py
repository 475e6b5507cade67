"""Concept-revival harness for pruning-based unlearning in text-to-image diffusion models.

`harness.run(recipe, run_dir)` runs a recipe's matrix from Python, as `harness benchmark` does
(harness.experiment.run)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """`harness.experiment.run.run`, imported when called (so `import harness` stays light)."""
    from harness.experiment.run import run as run_recipe

    return run_recipe(*args, **kwargs)
