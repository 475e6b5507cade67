"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), registered as `esd`.

Each step (PROTOCOL.md section 6, after the authors' `esd_diffusers.py`): draw i uniformly from
the DDIM steps 1..n-2; from fresh noise, sample i DDIM steps with the model *being trained*, the
concept prompt and guidance `start_guidance` (no gradient; latents of the recipe's generation
height and width, else the model's own size), reaching z at the DDIM schedule's
i-th timestep t; with the original (the UNet with the trained tensors' copies from before
training swapped in: one UNet held, not two), e_0 = eps(z, t, empty prompt) and e_p = eps(z, t,
concept prompt); with the trained model e_n = eps(z, t, concept prompt); the loss is
MSE(e_n, e_0 - eta * (e_p - e_0)). Defaults: eta 1.0, lr 1e-5, 1000 steps, batch 1, 50 DDIM
steps, `esd-x` (cross-attention; use `esd-u` for nudity). The concept prompt is a world's
prompts of the concept (one per step, cycling) or the concept's name, as the authors' code uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge
from diffusers import DDIMScheduler
from torch.nn import functional as F

from harness.config import check_bounds
from harness.registry import method
from harness.settings.generate import GenerationSettings
from harness.train.data import latent_shape
from harness.train.engine import FineTuneModule, Objective, TrainParams
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.training import concept_prompts, train_method


@dataclass
class ESDLoss:
    """The ESD objective's settings (of `esd`, and of `p-esd`, which learns a mask with it)."""

    eta: Annotated[float, Ge(0)] = 1.0
    """negative guidance: how far past the empty prompt the concept's prediction is pushed"""
    ddim_steps: Annotated[int, Ge(3)] = 50
    """DDIM steps of the sampling that makes each step's x_t"""
    start_guidance: Annotated[float, Ge(0)] = 3.0
    """guidance of that sampling"""
    prompts: list[str] = field(default_factory=list)
    """the concept prompts (default: a world's prompts of the concept, else its name)"""

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):  # the optimisation settings' checks, when mixed in
            super().__post_init__()  # type: ignore[misc]
        check_bounds(self)


@dataclass
class ESDParams(ESDLoss, TrainParams):
    """`params` of the `esd` method: the objective's and the training settings."""


class ESDObjective(Objective):
    """The ESD loss of one step; see the module docstring."""

    needs_frozen = True

    def __init__(self, prompts: list[str], params: ESDLoss, batch_size: int,
                 generation: GenerationSettings | None = None) -> None:
        self.prompts, self.params, self.batch_size = prompts, params, batch_size
        self.generation = generation or GenerationSettings()

    def prepare(self, module: FineTuneModule) -> None:
        self.concept = module.embed(self.prompts)
        self.empty = module.embed([""])
        self.sampler = DDIMScheduler.from_config(module.pipeline.scheduler.config)
        self.sampler.set_timesteps(self.params.ddim_steps, device=module.device)
        self.shape = latent_shape(module.pipeline, self.generation)

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        count = self.batch_size
        index = torch.randint(0, len(self.prompts), (count,), generator=generator)
        concept = self.concept[index]
        empty = self.empty.expand(count, -1, -1)
        steps = int(torch.randint(1, self.params.ddim_steps - 1, (1,), generator=generator))
        z = torch.randn((count, *self.shape), generator=generator).to(module.device)
        with torch.no_grad():
            z = self._sample(module, z, concept, empty, steps)
            t = self.sampler.timesteps[steps]
            e_0 = self.frozen(module, z, t, empty)
            e_p = self.frozen(module, z, t, concept)
        e_n = module.unet(z, t, encoder_hidden_states=concept).sample
        target = e_0 - self.params.eta * (e_p - e_0)
        return F.mse_loss(e_n.float(), target.float())

    def frozen(self, module: FineTuneModule, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction as before training."""
        return module.frozen(z, t, encoder_hidden_states=context).sample

    def _sample(self, module: FineTuneModule, z: torch.Tensor, concept: torch.Tensor, empty: torch.Tensor,
                steps: int) -> torch.Tensor:
        """`steps` DDIM steps from noise with the model being trained and guidance."""
        guidance = self.params.start_guidance
        for t in self.sampler.timesteps[:steps]:
            both = module.unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([empty, concept])).sample
            uncond, cond = both.chunk(2)
            z = self.sampler.step(uncond + guidance * (cond - uncond), t, z).prev_sample
        return z


@method("esd", params=ESDParams)
def esd(context: UnlearnContext, params: ESDParams) -> UnlearnResult:
    """Erased Stable Diffusion (harness.unlearn.method)."""
    prompts = concept_prompts(context, params.prompts)
    return train_method(context, ESDObjective(prompts, params, params.batch_size, context.generation), params,
                        {"prompts": prompts})
