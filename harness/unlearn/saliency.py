"""Gradient-saliency masks (SalUn / Scissorhands style; paper Appendix E).

The forgetting set is the model's own samples for the target concept's prompts (as SalUn does
for Stable Diffusion). The forgetting loss is the usual denoising loss on it: noise a sample at
a random training timestep and compare the UNet's prediction with its target (epsilon or v,
from the scheduler's prediction type), conditioned on the sample's prompt. Its gradient with
respect to each target weight, summed over the set, ranks the weights: SalUn's saliency |g| or
Scissorhands' connection sensitivity |w * g|. The top `fraction` (per layer, or over all target
layers together) is zeroed, as the paper does before attacking.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt, Lt
from diffusers import DDPMScheduler
from torch.nn import functional as F

from harness.config import check_bounds
from harness.models.pipelines import model_samples, prompt_embeddings
from harness.progress import bar
from harness.registry import method
from harness.unlearn.method import UnlearnContext, UnlearnResult
from harness.unlearn.prompts import prompt_pairs

log = logging.getLogger(__name__)


@dataclass
class SaliencyParams:
    """`params` of the `saliency` method."""

    fraction: Annotated[float, Gt(0), Lt(1)] = 0.01
    """Share of the target weights zeroed (per layer, or of all target weights with scope global)."""
    criterion: Literal["salun", "scissorhands"] = "salun"
    """salun: |gradient|; scissorhands: |weight * gradient| (connection sensitivity)."""
    scope: Literal["layer", "global"] = "layer"
    samples: Annotated[int, Ge(1)] = 16
    """Size of the forgetting set: generated samples, cycling through the target prompts."""
    noise_draws: Annotated[int, Ge(1)] = 4
    """(timestep, noise) draws per sample in the forgetting loss."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds(self)


@method("saliency", params=SaliencyParams, prunes=True)
def saliency(context: UnlearnContext, params: SaliencyParams) -> UnlearnResult:
    """Pruning by saliency: the top share of |gradient| of the forgetting loss, zeroed (harness.unlearn.method)."""
    prompts = prompt_pairs(context.concept, context.data_dir).target
    chosen = [prompts[i % len(prompts)] for i in range(params.samples)]
    pipeline = context.pipeline
    samples = model_samples(pipeline, chosen, context.generation, [params.seed + i for i in range(len(chosen))],
                            "forgetting set")
    gradients = forgetting_gradients(pipeline, context.layers, chosen, samples, params)
    weights = {name: p.detach() for name, p in pipeline.unet.named_parameters() if name in gradients}
    scores = {
        name: (g if params.criterion == "salun" else g * weights[name].float()).abs().cpu()
        for name, g in gradients.items()
    }
    masks = top_fraction(scores, params.fraction, params.scope)
    tensors = {name: weights[name].cpu().masked_fill(mask, 0) for name, mask in masks.items()}
    info = {"params": dataclasses.asdict(params), "prompts": {"target": sorted(set(chosen))}}
    return UnlearnResult(masks=masks, tensors=tensors, info=info)


def top_fraction(scores: dict[str, torch.Tensor], fraction: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean masks of the highest-scoring `fraction` of entries, per tensor or over all."""
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        count = max(1, int(round(fraction * flat.numel())))
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[flat.topk(count).indices] = True
        masks, start = {}, 0
        for name, s in scores.items():
            masks[name] = chosen[start : start + s.numel()].reshape(s.shape)
            start += s.numel()
        return masks
    masks = {}
    for name, s in scores.items():
        count = max(1, int(round(fraction * s.numel())))
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        mask[s.flatten().topk(count).indices] = True
        masks[name] = mask.reshape(s.shape)
    return masks


def forgetting_gradients(
    pipeline: Any, layers: list[str], prompts: list[str], samples: torch.Tensor, settings: SaliencyParams
) -> dict[str, torch.Tensor]:
    """Sum over the forgetting set of the denoising loss's gradient, per target layer (fp32)."""
    unet = pipeline.unet
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    parameters = dict(unet.named_parameters())
    previous = {name: p.requires_grad for name, p in parameters.items()}
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    sums = {name: torch.zeros_like(parameters[name], dtype=torch.float32) for name in layers}
    try:
        for name, parameter in parameters.items():
            parameter.requires_grad_(name in sums)
        with torch.no_grad():
            conditions = prompt_embeddings(pipeline, prompts)
        for _ in bar(range(settings.noise_draws), desc="forgetting loss", unit="draw"):
            x0 = samples.to(unet.device, unet.dtype)
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
            noisy = noise_scheduler.add_noise(x0, noise, steps)
            target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(x0, noise, steps)
            predicted = unet(noisy, steps.to(unet.device), encoder_hidden_states=conditions).sample
            loss = F.mse_loss(predicted.float(), target.float())
            unet.zero_grad(set_to_none=True)
            loss.backward()
            for name in sums:
                sums[name] += parameters[name].grad.float()
    finally:
        unet.zero_grad(set_to_none=True)
        for name, parameter in parameters.items():
            parameter.requires_grad_(previous[name])
    log.debug("forgetting gradients over %d samples x %d draws", len(samples), settings.noise_draws)
    return sums

