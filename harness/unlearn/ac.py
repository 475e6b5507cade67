"""AC, Ablating Concepts in Text-to-Image Diffusion Models (Kumari et al., ICCV 2023),
model-based variant, registered as `ac`.

The frozen model, before training, generates anchor samples from the anchor prompt (the
recipe's `concept.anchor`, e.g. "a photo of a digit"). Each step noises a batch of them at
random training timesteps and trains eps_theta(x_t, c_target, t) toward stopgrad(eps_theta(x_t,
c_anchor, t)) (PROTOCOL.md section 6): the target prompt comes to predict what the anchor does.
Defaults: the cross-attention key and value projections are trained (the paper's), lr 1e-5,
400 steps, 50 anchor samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge
from torch.nn import functional as F

from harness.config import check_bounds
from harness.errors import HarnessError, keyed
from harness.registry import method
from harness.train.data import generated_set
from harness.train.denoise import noise_samples
from harness.train.engine import FineTuneModule, Objective, TrainParams
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method


@dataclass
class ACLoss:
    """The AC objective's settings (of `ac`, and of `p-ac`, which learns a mask with it)."""

    anchor_samples: Annotated[int, Ge(1)] = 50
    """how many anchor samples the frozen model makes"""
    prompts: list[str] = field(default_factory=list)
    """the concept prompts (default: a world's prompts of the concept, else its name)"""

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):  # the optimisation settings' checks, when mixed in
            super().__post_init__()  # type: ignore[misc]
        check_bounds(self)


@dataclass
class ACParams(ACLoss, TrainParams):
    """`params` of the `ac` method."""

    steps: int = 400
    trainable: str | list[str] = field(default_factory=lambda: ["*attn2.to_k.*", "*attn2.to_v.*"])
    """the parameters trained (default: the cross-attention keys and values, as the paper)"""


class AnchorObjective(Objective):
    """The model-based AC loss; see the module docstring."""

    def __init__(self, anchors: torch.Tensor, anchor_prompt: str, prompts: list[str], batch_size: int) -> None:
        self.anchors, self.anchor_prompt, self.prompts, self.batch_size = anchors, anchor_prompt, prompts, batch_size

    def prepare(self, module: FineTuneModule) -> None:
        self.anchors = self.anchors.to(module.device)
        self.anchor = module.embed([self.anchor_prompt])
        self.concept = module.embed(self.prompts)

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(self.anchors), (self.batch_size,), generator=generator)
        prompt = torch.randint(0, len(self.prompts), (self.batch_size,), generator=generator)
        noised = noise_samples(module.noise_scheduler, self.anchors[index.to(self.anchors.device)], generator)
        with torch.no_grad():
            target = module.unet(noised.inputs, noised.timesteps,
                                 encoder_hidden_states=self.anchor.expand(self.batch_size, -1, -1)).sample
        predicted = module.unet(noised.inputs, noised.timesteps,
                                encoder_hidden_states=self.concept[prompt.to(self.concept.device)]).sample
        return F.mse_loss(predicted.float(), target.float())


def anchor_prompt(context: UnlearnContext) -> str:
    """The recipe's `concept.anchor`; AC and DiMUM need it."""
    if not context.concept.anchor:
        raise HarnessError("this method maps the concept onto an anchor concept; name one "
                           "(e.g. 'a photo of a digit', 'a painting')", key="concept.anchor", rooted=True)
    return context.concept.anchor


def anchor_objective(context: UnlearnContext, loss: ACLoss, batch_size: int, seed: int) -> tuple[AnchorObjective, dict]:
    """The AC objective of a context (the frozen model's anchor samples made first) and its record."""
    anchor = anchor_prompt(context)
    prompts = concept_prompts(context, loss.prompts)
    with keyed("params"):
        anchors = generated_set(context.pipeline, [anchor] * loss.anchor_samples, context.generation, seed,
                                "anchor samples")
    return AnchorObjective(anchors.inputs, anchor, prompts, batch_size), {"prompts": prompts, "anchor": anchor}


@method("ac", params=ACParams)
def ac(context: UnlearnContext, params: ACParams) -> UnlearnResult:
    """Ablating Concepts, the model-based variant (harness.unlearn.method)."""
    objective, info = anchor_objective(context, params, params.batch_size, params.seed)
    return train_method(context, objective, params, info)
