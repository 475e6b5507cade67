"""ConceptPrune (skilled-neuron pruning), PROTOCOL.md section 1.

For every UNet call t < tau and target layer, with column norms ||X_j|| of the layer's input
over base and over target prompts: S = |W| * ||X_j||; per output row the top
k = int(skill_ratio * in_features) columns by the target score are skilled where
S_target > S_base. The mask is the union over the first tau calls; the weights are zeroed.
Under the recipe's `fidelity: reference-code` the authors' object scene lists are used, and on a
GPU the starting noise comes from the device's own generator, as their code draws it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Annotated

import torch
from annotated_types import Ge, Gt, Le

from harness.config import check_bounds
from harness.errors import HarnessError
from harness.registry import method
from harness.settings.generate import GenerationSettings
from harness.unlearn.activations import TooFewCalls, column_norms
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.prompts import prompt_pairs

log = logging.getLogger(__name__)


@dataclass
class ConceptPruneParams:
    """`params` of the `conceptprune` method. Paper settings: objects 0.02 / 10,
    artists 0.01 / 10, nudity 0.01 / 9."""

    skill_ratio: Annotated[float, Gt(0), Le(1)] = 0.02
    """Share of a row's input columns that may be skilled: k = int(skill_ratio * in_features)."""
    tau: Annotated[int, Ge(1)] = 10
    """Union of the masks of the first tau UNet calls."""
    seed: int | None = None
    """Seed set before every prompt; None takes the recipe's generation.fixed_seed (0)."""
    images_per_prompt: Annotated[int, Ge(1)] = 1
    """Each prompt is also run from seeds seed+1, ..., seed+n-1 (1: the protocol's single run)."""

    def __post_init__(self) -> None:
        check_bounds(self)

    def preflight(self, model: str, generation: GenerationSettings) -> None:
        """Before any work: the sampler must make at least tau UNet calls (error keyed `tau`)."""
        check_tau(self.tau, model, generation)


def check_tau(tau: int, model: str, generation: GenerationSettings) -> None:
    """tau counts UNet calls: generation's steps must make at least that many with its scheduler."""
    from harness.models.pipelines import unet_calls

    calls, scheduler = unet_calls(model, generation.scheduler, generation.steps)
    if calls >= tau:
        return
    needed = next((s for s in range(1, tau + 1) if unet_calls(model, generation.scheduler, s)[0] >= tau), tau)
    sampler = f" with {scheduler}" if scheduler else ""
    raise HarnessError(f"tau {tau} needs at least {needed} sampling steps{sampler} ({tau} UNet calls); "
                       f"generation.steps is {generation.steps} ({calls} calls)", key="tau")


def skilled_mask(
    weight: torch.Tensor, base_norms: torch.Tensor, target_norms: torch.Tensor, k: int
) -> torch.Tensor:
    """Union over calls of the per-row top-k skilled entries; norms are (calls, in_features)."""
    magnitude = weight.detach().abs().float()
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    for base, target in zip(base_norms.to(magnitude.device), target_norms.to(magnitude.device)):
        target_score = magnitude * target
        top = target_score.topk(k, dim=1).indices
        skilled = target_score.gather(1, top) > (magnitude * base).gather(1, top)
        mask.scatter_(1, top, skilled | mask.gather(1, top))
    return mask


@method("conceptprune", params=ConceptPruneParams, prunes=True)
def conceptprune(context: UnlearnContext, params: ConceptPruneParams) -> UnlearnResult:
    """ConceptPrune's mask of the context's layers, the weights zeroed there (harness.unlearn.method)."""
    seed = context.generation.fixed_seed if params.seed is None else params.seed
    weights = dict(context.pipeline.unet.named_parameters())
    for name in context.layers:
        if weights[name].dim() != 2:
            raise HarnessError(f"'{name}' is not a linear weight (shape {tuple(weights[name].shape)})", key="layers")
    ks = {name: int(params.skill_ratio * weights[name].shape[1]) for name in context.layers}
    for name, k in ks.items():
        if k < 1:
            raise HarnessError(f"{params.skill_ratio} x {weights[name].shape[1]} input features of '{name}' "
                               "leaves k = 0", key="params.skill_ratio")
    pairs = prompt_pairs(context.concept, context.data_dir, context.fidelity)
    # the authors' code seeds the device's own generator: on a GPU, its starting noise differs from a CPU generator's
    noise_device = context.device.type if context.fidelity == "reference-code" else "cpu"
    norms = {}
    try:
        for side, prompts in (("base", pairs.base), ("target", pairs.target)):
            runs = [(p, seed + j) for p in prompts for j in range(params.images_per_prompt)]
            norms[side] = column_norms(
                context.pipeline, context.layers, [p for p, _ in runs], params.tau, context.generation,
                [s for _, s in runs], f"{side} prompts", noise_device,
            )
    except TooFewCalls as error:
        raise HarnessError(str(error), key="params.tau") from None
    masks, tensors = {}, {}
    for name in context.layers:
        masks[name] = skilled_mask(weights[name], norms["base"][name], norms["target"][name], ks[name]).cpu()
        tensors[name] = weights[name].detach().cpu().masked_fill(masks[name], 0)
        log.debug("%s: %d of %d weights skilled", name, int(masks[name].sum()), masks[name].numel())
    info = {
        "params": dataclasses.asdict(params) | {"seed": seed},
        "fidelity": context.fidelity,
        "noise_generator": noise_device,
        "k": ks,
        "prompts": {"base": pairs.base, "target": pairs.target},
    }
    return UnlearnResult(masks=masks, tensors=tensors, info=info)

