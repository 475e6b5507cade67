"""P-ESD and P-AC, "Pruning for Robust Concept Erasing in Diffusion Models" (Yang, Cao, Xu; seed
003), registered as `p-esd` and `p-ac`: the chosen layers' weights stay frozen and a mask over
them is learned with the ESD (or AC) objective; the pruned weights become exactly zero.

The paper's code is not public; the harness's choices (PROTOCOL.md section 7; BENCHMARKS.md,
"Learned masks"):

- the mask is parameter-level, one score per weight of the entry's `layers` (default: every
  weight matrix of the feed-forwards and the cross-attention of the transformer blocks), and
  the effective weight is W * m (harness.train.masking);
- m = sigmoid(s / T) with T annealed geometrically from 1 to 0.05 (`form: sigmoid`, the
  default), or the straight-through hard mask (`form: straight-through`); scores start at
  `init_score` = 3 (nothing pruned) and train with AdamW at lr 0.1;
- the budget: at most `budget` (default 5%) of the masked weights are pruned; the loss is the
  objective's plus `penalty` times the pruned share's excess over the budget, and the hard mask
  prunes the weights whose score ends below zero, the lowest first, up to the budget;
- the output is the mask and the masked layers with their pruned weights at exactly zero, like
  ConceptPrune's, so every attack and the Gaussian defense apply unchanged. The record gives
  the pruned share, per layer too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.errors import keyed
from harness.registry import method
from harness.train.engine import Objective, OptimParams, fine_tune
from harness.train.masking import MaskLearning, MaskObjective, detach_masks, hard_masks
from harness.unlearn.ac import ACLoss, anchor_objective
from harness.unlearn.esd import ESDLoss, ESDObjective
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts

MASK_LAYERS = ["*transformer_blocks.*.ff.*.weight", "*transformer_blocks.*.attn2.*.weight"]
"""The layers a learned mask covers by default: feed-forwards and cross-attention."""


@dataclass
class PESDParams(MaskLearning, ESDLoss, OptimParams):
    """`params` of `p-esd`: the mask's, the ESD objective's and the optimisation's."""

    steps: int = 400


@dataclass
class PACParams(MaskLearning, ACLoss, OptimParams):
    """`params` of `p-ac`: the mask's, the AC objective's and the optimisation's."""

    steps: int = 400
    batch_size: int = 4


def learn_mask(context: UnlearnContext, inner: Objective, settings: MaskLearning, info: dict[str, Any]) -> UnlearnResult:
    """Learn a mask over the context's layers toward `inner` and prune by it; see the module docstring."""
    assert isinstance(settings, OptimParams)
    assert context.scratch is not None, "the unlearn stage gives training methods a scratch folder"
    names = [n for n, p in context.pipeline.unet.named_parameters() if n in set(context.layers) and p.is_floating_point()]
    objective = MaskObjective(inner, names, settings, settings.steps)
    try:
        with keyed("params"):
            outcome = fine_tune(context.pipeline, objective, settings, context.scratch, context.settings_key,
                                context.job.method.name or context.job.method.method, context.device, context.runtime)
    finally:
        detach_masks(context.pipeline.unet, names)
    scores = {name: outcome.extra[f"mask{index}"] for index, name in enumerate(names)}
    pruned = hard_masks(scores, settings.budget)
    weights = dict(context.pipeline.unet.named_parameters())
    tensors = {}
    for name in names:
        tensor = weights[name].detach().cpu().clone()
        tensor[pruned[name]] = 0
        tensors[name] = tensor
    total = sum(p.numel() for p in pruned.values())
    count = sum(int(p.sum()) for p in pruned.values())
    record = {
        "params": dataclasses.asdict(settings),
        "steps": outcome.steps,
        "final_loss": outcome.final_loss,
        "train_seconds": outcome.seconds,
        "resumed_from_step": outcome.resumed_from,
        "masked_weights": total,
        "pruned": count,
        "pruned_share": count / total,
        "below_zero": sum(int((s < 0).sum()) for s in scores.values()),
        "pruned_by_layer": {name: int(p.sum()) for name, p in pruned.items()},
        **info,
    }
    return UnlearnResult(masks=pruned, tensors=tensors, info=record)


@method("p-esd", params=PESDParams, prunes=True, layers=MASK_LAYERS)
def p_esd(context: UnlearnContext, params: PESDParams) -> UnlearnResult:
    """A mask learned with the ESD objective (harness.unlearn.method)."""
    prompts = concept_prompts(context, params.prompts)
    return learn_mask(context, ESDObjective(prompts, params, params.batch_size, context.generation), params,
                      {"objective": "esd", "prompts": prompts})


@method("p-ac", params=PACParams, prunes=True, layers=MASK_LAYERS)
def p_ac(context: UnlearnContext, params: PACParams) -> UnlearnResult:
    """A mask learned with the AC objective (harness.unlearn.method)."""
    objective, info = anchor_objective(context, params, params.batch_size, params.seed)
    return learn_mask(context, objective, params, {"objective": "ac", **info})
