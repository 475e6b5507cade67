"""The defense trade-off: erased and preserved accuracy of the unlearned and the attacked model
against sigma_M of the Gaussian obfuscation, with the detectability p(w = sigma_M) of Eq. 7."""

from __future__ import annotations

from dataclasses import dataclass

from harness.layout import ModelRef
from harness.registry import table
from harness.report.cells import Cell, Table
from harness.report.kinds import is_class_run
from harness.report.runs import RunData
from harness.report.table_ablation import methods_of, revival_models
from harness.report.table_objects import class_accuracy


@dataclass
class DefensePoint:
    """One method of the sweep: its sigma_M (None = no defense) and accuracies."""

    run: RunData
    method: str
    sigma: float | None
    unlearned: tuple[float | None, float | None]
    attacked_model: ModelRef | None
    attacked: tuple[float | None, float | None]


def defense_points(runs: list[RunData]) -> dict[str, list[DefensePoint]]:
    """target -> its methods (undefended first, then by sigma), when any of them is defended."""
    groups: dict[str, list[DefensePoint]] = {}
    for run in runs:
        if not is_class_run(run):
            continue
        for method in methods_of(run):
            attacks = revival_models(run, method)
            attacked = attacks[0][0] if attacks else None
            point = DefensePoint(run, method, run.sigma(method), class_accuracy(run, ModelRef(method)), attacked,
                                 class_accuracy(run, attacked) if attacked else (None, None))
            groups.setdefault(run.target or run.name, []).append(point)
    return {target: sorted(points, key=lambda p: (p.sigma is not None, p.sigma or 0.0))
            for target, points in groups.items() if any(p.sigma is not None for p in points)}


@table("defense", label="Defense trade-off", absent="no method with a defense (give defended methods or run directories)")
def defense_table(runs: list[RunData]) -> Table | None:
    """One row per method of each target with a defended method."""
    groups = defense_points(runs)
    if not groups:
        return None
    rows: list[list[Cell]] = []
    for target, points in groups.items():
        for p in points:
            record = p.run.unlearn.get(p.method)
            detectability = (record.detectability if record else None) or {}
            rows.append([target, p.sigma if p.sigma is not None else "none", *p.unlearned,
                         p.attacked_model.label if p.attacked_model else None, *p.attacked,
                         detectability.get("p_at_w_sigma_m"), detectability.get("exact_zeros"),
                         f"{p.run.name}/{p.method}"])
    columns = ["Class", "sigma_M", "unlearned erased", "unlearned preserved", "attack model",
               "attacked erased", "attacked preserved", "p(w = sigma_M)", "exact zeros", "Run/method"]
    notes = ["attack model: the method's first revival attack proper (not quant4 or an ideal case)",
             "p(w = sigma_M): Eq. 7 at w = sigma_M, as the unlearn record holds it (defended methods only)"]
    return Table("defense_tradeoff", "Defense trade-off: Gaussian obfuscation sigma_M", columns, rows, notes)
