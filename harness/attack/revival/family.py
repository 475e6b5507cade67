"""The revival family of attacks (the paper's Sec. 4): registered as `nms`, `average`, `sample`,
`align` (the magnitude rules), `quant4` (the Quant Recover baseline) and the three ideal cases.

Each finds the pruned positions of the unlearned model's target layers (exact zeros by default),
completes every layer by SoftImpute, keeps the Top-K most confident signs and gives them the
rule's magnitudes; the layers are spread over Accelerate processes. `params` are
`harness.attack.revival.settings.RevivalParams` (layers, mask, completion, top_k, seed; layers default
to the attacked method's own); the attack's name fixes its magnitude rule or strategy.
"""

from __future__ import annotations

import dataclasses
import time

from harness.attack.interface import AttackContext, AttackResult, NotApplicable, declares
from harness.attack.revival.runner import load_jobs, revive_layers
from harness.attack.revival.settings import IDEAL_STRATEGIES, REVIVAL_PRESETS, revival_settings
from harness.layout import AttackFiles
from harness.models.layers import select_layers
from harness.records import ReviveReport, ReviveSummary

NOTHING_PRUNED = "no target layer has a pruned entry (no exact zeros)"


def revive(context: AttackContext, params: dict, preset: dict) -> AttackResult:
    """Revive the unlearned model's pruned weights with `params` over the attack's `preset`; the
    target layers are the weight matrices the method was allowed to change unless `params` name
    them."""
    if "layers" not in params and context.layers:
        state = context.unlearned_state()
        matrices = [name for name in select_layers(state, context.layers) if state[name].ndim == 2]
        if not matrices:
            raise NotApplicable("the method's layers hold no weight matrix")
        params = {**params, "layers": matrices}
    settings = revival_settings(params, preset, context.key("params"))
    ideal = settings.strategy in IDEAL_STRATEGIES
    original = context.original_state() if ideal else context.measurement_original()
    start = time.perf_counter()
    jobs = load_jobs(context.unlearned_state(), original, settings, context.where, "original")
    if settings.strategy != "quant4" and not any(bool(job.pruned.any()) for job in jobs):
        raise NotApplicable(NOTHING_PRUNED)
    accelerator = context.accelerator
    merged = revive_layers(jobs, settings, context.device, accelerator, AttackFiles(context.scratch), context.fidelity)
    if merged is None:
        return AttackResult(tensors={})
    tensors, layers = merged
    report = ReviveReport(layers=layers, summary=ReviveSummary.of(layers), processes=accelerator.num_processes,
                          seconds=round(time.perf_counter() - start, 3),
                          settings=dataclasses.asdict(settings) | {"fidelity": context.fidelity})
    return AttackResult(tensors=tensors, revival=report,
                        info={"layers": len(layers), "pruned": report.summary.pruned, "kept": report.summary.kept})


@declares("sharded")
def nms(context: AttackContext, params: dict) -> AttackResult:
    """Neuron-Max Scaling, the paper's attack: each revived weight gets its row's largest |w|."""
    return revive(context, params, REVIVAL_PRESETS["nms"])


@declares("sharded")
def average(context: AttackContext, params: dict) -> AttackResult:
    """Neuron Average: the row's mean |w|."""
    return revive(context, params, REVIVAL_PRESETS["average"])


@declares("sharded")
def sample(context: AttackContext, params: dict) -> AttackResult:
    """Neuron Sample: |N(mu, sigma)| of the row's surviving |w|."""
    return revive(context, params, REVIVAL_PRESETS["sample"])


@declares("sharded")
def align(context: AttackContext, params: dict) -> AttackResult:
    """Align: the completed value's own magnitude."""
    return revive(context, params, REVIVAL_PRESETS["align"])


@declares("sharded")
def quant4(context: AttackContext, params: dict) -> AttackResult:
    """Quant Recover (Zhang et al. 2024): 4-bit per-row quantisation of the unlearned weights."""
    return revive(context, params, REVIVAL_PRESETS["quant4"])


@declares("sharded", "original")
def ideal_sign_nms(context: AttackContext, params: dict) -> AttackResult:
    """Ideal case: the true signs with NMS magnitudes (reads the original weights)."""
    return revive(context, params, REVIVAL_PRESETS["ideal-sign-nms"])


@declares("sharded", "original")
def ideal_sign_sample(context: AttackContext, params: dict) -> AttackResult:
    """Ideal case: the true signs with sampled magnitudes (reads the original weights)."""
    return revive(context, params, REVIVAL_PRESETS["ideal-sign-sample"])


@declares("sharded", "original")
def ideal_magnitude_random_sign(context: AttackContext, params: dict) -> AttackResult:
    """Ideal case: the true magnitudes with random signs (reads the original weights)."""
    return revive(context, params, REVIVAL_PRESETS["ideal-magnitude-random-sign"])
