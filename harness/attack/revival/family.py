"""The revival family of attacks (the paper's Sec. 4), declared once: `nms`, `average`, `sample`,
`align` (the magnitude rules), `quant4` (the Quant Recover baseline) and the three ideal cases.

Each finds the pruned positions of the unlearned model's target layers (exact zeros by default),
completes every layer by SoftImpute, keeps the Top-K most confident signs and gives them the
rule's magnitudes; the layers are spread over Accelerate processes. Params are
`harness.attack.revival.settings.RevivalParams` (layers, mask, completion, top_k, seed; layers
default to the attacked method's own); the attack's name fixes its magnitude rule or strategy.
"""

from __future__ import annotations

import dataclasses
import time

from harness.attack.interface import AttackContext, AttackResult, NotApplicable
from harness.attack.revival.layer import LayerJob
from harness.attack.revival.runner import load_jobs, revive_layers
from harness.attack.revival.settings import IDEAL_STRATEGIES, REVIVAL_PRESETS, RevivalParams
from harness.errors import keyed
from harness.layout import AttackFiles
from harness.models.layers import select_layers
from harness.records import ReviveReport, ReviveSummary
from harness.registry import attack

NOTHING_PRUNED = "no target layer has a pruned entry"


def revive(context: AttackContext, params: RevivalParams) -> AttackResult:
    """Revive the unlearned model's pruned weights; the target layers are the weight matrices the
    method was allowed to change unless `params` name them."""
    if params.layers is None:
        state = context.unlearned_state()
        matrices = [name for name in select_layers(state, context.layers) if state[name].ndim == 2] if context.layers else []
        if context.layers and not matrices:
            raise NotApplicable("the method's layers hold no weight matrix")
        params = dataclasses.replace(params, layers=matrices or None)
    ideal = params.strategy in IDEAL_STRATEGIES
    original = context.original_state() if ideal else context.measurement_original()
    start = time.perf_counter()
    accelerator = context.accelerator
    with keyed("params"):
        jobs = load_jobs(context.unlearned_state(), original, params, context.device, accelerator,
                         AttackFiles(context.scratch).masks)
    if params.strategy != "quant4" and not any(bool(job.pruned.any()) for job in jobs):
        raise NotApplicable(nothing_pruned(jobs, params))
    merged = revive_layers(jobs, params, context.device, accelerator, AttackFiles(context.scratch), context.fidelity)
    if merged is None:
        return AttackResult(tensors={})
    tensors, layers = merged
    report = ReviveReport(layers=layers, summary=ReviveSummary.of(layers), processes=accelerator.num_processes,
                          seconds=round(time.perf_counter() - start, 3),
                          settings=dataclasses.asdict(params) | {"fidelity": context.fidelity})
    return AttackResult(tensors=tensors, revival=report,
                        info={"layers": len(layers), "pruned": report.summary.pruned, "kept": report.summary.kept})


def nothing_pruned(jobs: list[LayerJob], params: RevivalParams) -> str:
    """Why no layer has a position to revive: NOTHING_PRUNED and, for exact zeros, the rule and the
    layer with the most zeros."""
    if params.mask.kind != "zeros":
        return f"{NOTHING_PRUNED} (the mask rule, {params.mask.kind}, marks no entry)"
    most = max(jobs, key=lambda job: job.mask.zeros if job.mask else 0)
    if most.mask is None or not most.mask.zeros:
        return f"{NOTHING_PRUNED} (no exact zeros)"
    return (f"{NOTHING_PRUNED} (no layer's exact zeros reach min_pruned_share {params.mask.min_pruned_share:g} of its "
            f"entries; the most: {most.name}, {most.mask.zeros} zero(s), {most.mask.zero_share:.3g})")


for _name, _fixed in REVIVAL_PRESETS.items():
    attack(_name, params=RevivalParams, fixed=_fixed, control="conceptprune",
           reads={"sharded", "original"} if _name in IDEAL_STRATEGIES else {"sharded"})(revive)
