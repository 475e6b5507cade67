"""The plain denoising objective's pieces: noising clean samples at random training timesteps and
the target the UNet predicts (epsilon or v, from the scheduler's prediction type)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch.nn import functional as F


@dataclass
class Noised:
    """Noised samples, their timesteps and what the UNet should predict for them."""

    inputs: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


def noise_samples(scheduler: DDPMScheduler, x0: torch.Tensor, generator: torch.Generator) -> Noised:
    """x_t for clean samples x0 at uniform training timesteps, with the target of the scheduler's
    prediction type; the noise comes from `generator` (on the CPU), so a step is reproducible."""
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, steps)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, steps)
    return Noised(noisy, steps, target)


def denoising_loss(unet: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, condition: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """E ||target - unet(x_t, t, c)||^2 over one batch: the plain diffusion training loss."""
    noised = noise_samples(scheduler, x0, generator)
    predicted = unet(noised.inputs, noised.timesteps, encoder_hidden_states=condition).sample
    return F.mse_loss(predicted.float(), noised.target.float())
