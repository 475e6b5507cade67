"""Learned pruning masks over UNet weights: the weights stay frozen, a score per weight makes a
differentiable mask m, the UNet computes with W * m, and any training objective (ESD, AC) trains
the scores, with a penalty on the weights it prunes. At the end the mask is made hard: a weight
is pruned where its score is below zero, at most `budget` of the masked weights (the lowest
scores first), and the pruned weights become exactly zero.

Two mask forms (the `form` setting):

- `sigmoid` (continuous sparsification, Savarese et al. 2020): m = sigmoid(s / T), the
  temperature T annealed geometrically from `temperature_start` to `temperature_end` over the
  run, so that the soft mask the objective sees at the end is nearly the hard one;
- `straight-through`: the forward pass uses the hard mask 1[s > 0] (exactly the original model
  at the start), the backward pass the gradient of sigmoid(s).

The budget is kept during training too: `penalty` times the excess of the pruned share over
`budget`, max(0, mean(1 - m) - budget), is added to the objective's loss every step (the share
is logged as `pruned`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt, Lt
from torch.nn.utils import parametrize

from harness.config import check_bounds
from harness.train.engine import FineTuneModule, Objective

MaskForm = Literal["sigmoid", "straight-through"]


@dataclass
class MaskLearning:
    """How a mask is learned (the `params` a learned-mask method adds to its objective's)."""

    lr: float = 0.1
    """AdamW learning rate of the mask scores"""
    form: MaskForm = "sigmoid"
    """sigmoid (annealed temperature) or straight-through (hard forward, sigmoid gradient)"""
    budget: Annotated[float, Gt(0), Lt(1)] = 0.05
    """the largest share of the masked weights the hard mask prunes, in (0, 1)"""
    penalty: Annotated[float, Ge(0)] = 1.0
    """weight of the pruned share's excess over the budget in the loss"""
    init_score: Annotated[float, Gt(0)] = 3.0
    """every score's start (above zero: nothing pruned)"""
    temperature_start: float = 1.0
    """the sigmoid form's temperature at the first step"""
    temperature_end: float = 0.05
    """... and at the last"""

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):  # the optimisation settings' checks, when mixed in
            super().__post_init__()  # type: ignore[misc]
        check_bounds(self)
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError("temperatures must satisfy 0 < temperature_end <= temperature_start")


class WeightMask(torch.nn.Module):
    """The parametrization W -> W * m(scores) of one weight; the scores are shared with the
    objective (which sets the temperature)."""

    def __init__(self, scores: torch.nn.Parameter, objective: MaskObjective) -> None:
        super().__init__()
        self.scores = scores
        self.objective = [objective]  # a list, so that the objective is not a submodule

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.objective[0].unmasked:
            return weight
        return weight * self.objective[0].mask(self.scores).to(weight.dtype)


class MaskObjective(Objective):
    """Another objective's loss on the masked UNet plus the penalty; see the module docstring."""

    def __init__(self, inner: Objective, names: list[str], settings: MaskLearning, steps: int) -> None:
        self.inner, self.names, self.settings, self.steps = inner, list(names), settings, steps
        self.needs_frozen = inner.needs_frozen
        self.temperature = settings.temperature_start
        self.scores: dict[str, torch.nn.Parameter] = {}
        self.unmasked = False

    @contextmanager
    def as_before_training(self) -> Iterator[None]:
        """The masks off (the UNet computes with its own weights), and the inner objective's own."""
        self.unmasked = True
        try:
            with self.inner.as_before_training():
                yield
        finally:
            self.unmasked = False

    def attach(self, module: FineTuneModule) -> None:
        parameters = dict(module.unet.named_parameters())
        for index, name in enumerate(self.names):
            owner, attribute = _owner(module.unet, name)
            scores = torch.nn.Parameter(torch.full_like(parameters[name], self.settings.init_score, dtype=torch.float32))
            module.extra[f"mask{index}"] = scores
            self.scores[name] = scores
            parametrize.register_parametrization(owner, attribute, WeightMask(scores, self))

    def prepare(self, module: FineTuneModule) -> None:
        self.inner.prepare(module)

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """The mask the UNet computes with now."""
        if self.settings.form == "sigmoid":
            return torch.sigmoid(scores / self.temperature)
        soft = torch.sigmoid(scores)
        return (scores > 0).to(soft.dtype) + soft - soft.detach()

    def pruned_share(self) -> torch.Tensor:
        """mean(1 - m) over every masked weight, m the mask the UNet computes with."""
        total = sum(float(s.numel()) for s in self.scores.values())
        return sum((1 - self.mask(s)).sum() for s in self.scores.values()) / total

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        self.temperature = temperature_at(module.global_step, self.steps, self.settings)
        share = self.pruned_share()
        module.log("pruned", share.detach(), prog_bar=True, on_step=True, logger=True, batch_size=1)
        excess = torch.relu(share - self.settings.budget)
        return self.inner.loss(module, generator) + self.settings.penalty * excess


def temperature_at(step: int, steps: int, settings: MaskLearning) -> float:
    """The sigmoid form's temperature at `step` of `steps`: geometric from start to end."""
    progress = step / max(steps - 1, 1)
    return settings.temperature_start * math.exp(progress * math.log(settings.temperature_end / settings.temperature_start))


def hard_masks(scores: dict[str, torch.Tensor], budget: float) -> dict[str, torch.Tensor]:
    """True where a weight is pruned: its score is below zero, and at most `budget` of all the
    masked weights are (the lowest scores over every layer together, when more are below zero)."""
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    lowest = torch.argsort(flat, stable=True)[: int(budget * len(flat))]
    pruned = torch.zeros(len(flat), dtype=torch.bool)
    pruned[lowest] = True
    pruned &= flat < 0
    parts = pruned.split([s.numel() for s in scores.values()])
    return {name: part.view(s.shape) for (name, s), part in zip(scores.items(), parts)}


def detach_masks(unet: torch.nn.Module, names: list[str]) -> None:
    """Remove the mask parametrizations: the UNet computes with its own weights again."""
    for name in names:
        owner, attribute = _owner(unet, name)
        if parametrize.is_parametrized(owner, attribute):
            parametrize.remove_parametrizations(owner, attribute, leave_parametrized=False)


def _owner(unet: torch.nn.Module, name: str) -> tuple[Any, str]:
    """The module holding parameter `name` and the parameter's attribute name there."""
    path, _, attribute = name.rpartition(".")
    return unet.get_submodule(path), attribute
