"""Table 3: the erased class's accuracy after each revival attack, by Top-K and magnitude rule,
one table per (run, method)."""

from __future__ import annotations

from harness.layout import ModelRef
from harness.registry import table
from harness.report.cells import Cell, Table, slug
from harness.report.kinds import is_class_run
from harness.report.runs import RunData
from harness.report.table_objects import class_accuracy

MAGNITUDE_ORDER = ("sample", "average", "nms", "align")


def revival_models(run: RunData, method: str) -> list[tuple[ModelRef, dict]]:
    """(model, revival settings) of the method's revival attacks proper (not quant4 or an ideal case)."""
    found = []
    for model in run.models:
        if model.method != method or model.attack == "none":
            continue
        settings = run.revival_settings(model)
        if settings is not None and settings.get("strategy") == "attack":
            found.append((model, settings))
    return found


def methods_of(run: RunData) -> list[str]:
    """The run's methods (not the pretrained model), in the matrix's order."""
    return list(dict.fromkeys(m.method for m in run.models if m.method != "pretrained"))


@table("ablation", label="Table 3 (Top-K x magnitude)", absent="no class run with a revival attack")
def ablation_tables(runs: list[RunData]) -> list[Table]:
    """Table 3 per class run and method: erased-class accuracy of each (Top-K, magnitude) attack."""
    tables = []
    for run in runs:
        if not is_class_run(run):
            continue
        for method in methods_of(run):
            models = revival_models(run, method)
            if not models:
                continue
            grid: dict[tuple[float, str], ModelRef] = {}
            for model, settings in models:
                grid.setdefault((settings["top_k"], settings["magnitude"]), model)
            ks = sorted({k for k, _ in grid}, reverse=True)
            mags = sorted({m for _, m in grid}, key=MAGNITUDE_ORDER.index)
            rows: list[list[Cell]] = [[f"Top {k:g}", *(class_accuracy(run, grid[(k, m)])[0] if (k, m) in grid else None
                                                       for m in mags)] for k in ks]
            notes = [f"erased-class accuracy ('{run.target}') of {method} after each attack; attacks: "
                     + ", ".join(f"{grid[key].attack} = (K {key[0]:g}, {key[1]})" for key in sorted(grid))]
            tables.append(Table(f"table3_topk_magnitude_{slug(run.name)}_{slug(method)}",
                                f"Table 3. Effect of Top-K and magnitudes on {run.target} revival ({run.name}, {method})",
                                ["Top-K retention", *mags], rows, notes))
    return tables
