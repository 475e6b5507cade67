"""Recovery curves of optimisation attacks: for a training attack (DiMRA, concept inversion) the
erased and preserved accuracy after every snapshot, from the unlearned model (step 0) to the
attack's end; for a per-prompt attack (UnlearnDiff, P4D) the share of prompts broken by each
round against the steps a prompt had by then, from its record; and the first step at which the
erased concept is back to half of the pretrained model's accuracy."""

from __future__ import annotations

from dataclasses import dataclass

from harness.layout import PRETRAINED_MODEL, ModelRef
from harness.registry import table
from harness.report.cells import Cell, Table
from harness.report.runs import RunData
from harness.report.table_objects import class_suites


@dataclass
class CurvePoint:
    """One point of a curve: steps trained, accuracies, the erased class's n and interval."""

    step: int
    erased: float | None
    preserved: float | None
    n_erased: int
    erased_ci: list[float] | None


@dataclass
class Curve:
    """A training attack's curve on one method's model."""

    run: RunData
    method: str
    attack: str
    points: list[CurvePoint]
    pretrained: float | None

    def crossing(self) -> int | None:
        """The first step whose erased accuracy reaches half of the pretrained one, or None."""
        if self.pretrained is None:
            return None
        return next((p.step for p in self.points if p.erased is not None and p.erased >= self.pretrained / 2), None)


def curves(runs: list[RunData]) -> list[Curve]:
    """Every training attack with snapshots, per run and method."""
    found = []
    for run in runs:
        erased_suite, preserved_suite = class_suites(run)
        if erased_suite is None:
            continue
        pretrained = run.row(PRETRAINED_MODEL, erased_suite)
        finals = [m for m in run.models if m.step is None and any(s.step is not None and s.final == m for s in run.models)]
        for final in finals:
            models = [ModelRef(final.method), *sorted((m for m in run.models if m.step is not None and m.final == final),
                                                      key=lambda m: m.step or 0), final]
            record = run.attacks.get(final)
            end = int(record.info.get("steps", 0)) if record is not None else 0
            points = []
            for model in models:
                erased_row = run.row(model, erased_suite)
                preserved_row = run.row(model, preserved_suite) if preserved_suite else None
                step = 0 if model.attack == "none" else model.step if model.step is not None else end
                points.append(CurvePoint(step, erased_row.erased_accuracy if erased_row else None,
                                         preserved_row.preserved_accuracy if preserved_row else None,
                                         erased_row.n_erased if erased_row else 0,
                                         erased_row.erased_ci if erased_row else None))
            found.append(Curve(run, final.method, final.attack, _unique_steps(points),
                               pretrained.erased_accuracy if pretrained else None))
        for model, record in run.attacks.items():
            if model.step is None and record is not None and record.info.get("curve") and not record.info.get("snapshots"):
                points = [CurvePoint(int(p["steps"]), p["share"], None, int(p["n"]), p["ci"]) for p in record.info["curve"]]
                found.append(Curve(run, model.method, model.attack, points,
                                   pretrained.erased_accuracy if pretrained else None))
    return found


def _unique_steps(points: list[CurvePoint]) -> list[CurvePoint]:
    """One point per step (the final model equals the last snapshot when it falls on it)."""
    by_step: dict[int, CurvePoint] = {}
    for point in points:
        by_step.setdefault(point.step, point)
    return [by_step[s] for s in sorted(by_step)]


@table("curves", label="Recovery curves", absent="no training attack with snapshots")
def curve_table(runs: list[RunData]) -> Table | None:
    """One row per point of every curve."""
    found = curves(runs)
    if not found:
        return None
    rows: list[list[Cell]] = []
    for curve in found:
        crossing = curve.crossing()
        last = curve.points[-1].step
        for point in curve.points:
            rows.append([curve.run.name, curve.method, curve.attack, point.step, point.erased, point.n_erased,
                         f"[{point.erased_ci[0]:.2f}, {point.erased_ci[1]:.2f}]" if point.erased_ci else None,
                         point.preserved, crossing if crossing is not None else f"never within {last} steps"])
    notes = ["step 0 is the unlearned model; half of pretrained: the first step whose erased-class accuracy "
             "reaches half the pretrained model's on the same suite"]
    return Table("recovery_curves", "Recovery curves of training attacks (erased and preserved accuracy against steps)",
                 ["Run", "Method", "Attack", "Step", "erased", "n", "erased 95% CI", "preserved",
                  "back to half of pretrained at step"], rows, notes)
