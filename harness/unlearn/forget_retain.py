"""What EraseDiff and SalUn share: a forget set (the frozen model's samples of the concept's
prompts, each with the index of its prompt), a retain set as DiMUM builds it (a world's real
images of the other classes with their prompts, or any data source), their prompt embeddings
on the training device, and the two losses:

- `mapping_loss`: MSE(eps_theta(x_t, c), sg[eps_theta(x_t, c')]) on one noised sample: the
  concept's prediction pulled to another prompt's prediction by the *current* model, detached
  (both branches share x_0, the noise and t), as both authors' codes do;
- the retain term: the plain denoising loss of the retain samples under their own prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from harness.errors import keyed
from harness.train.data import DataSpec, TrainingSet, build_set, generated_set
from harness.train.denoise import denoising_loss, noise_samples
from harness.train.engine import FineTuneModule
from harness.unlearn.method import UnlearnContext


class Conditioned:
    """Samples and their prompts, the prompts embedded once on the training device."""

    def __init__(self, inputs: torch.Tensor, prompts: list[str]) -> None:
        self.inputs, self.prompts = inputs, list(prompts)
        self.table = list(dict.fromkeys(self.prompts))
        self.prompt_index = torch.tensor([self.table.index(p) for p in self.prompts])

    def __len__(self) -> int:
        return len(self.inputs)

    def prepare(self, module: FineTuneModule) -> None:
        self.inputs = self.inputs.to(module.device)
        self.embeddings = module.embed(self.table)

    def draw(self, size: int, generator: torch.Generator, first: bool = False) -> torch.Tensor:
        """`size` sample indices: drawn with replacement, or the set's first ones (`first`: an
        unshuffled loader's first batch)."""
        if first:
            return torch.arange(size) % len(self)
        return torch.randint(0, len(self), (size,), generator=generator)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples at `index` and their prompts' embeddings."""
        return self.inputs[index.to(self.inputs.device)], self.embeddings[self.prompt_index[index].to(self.inputs.device)]


def forget_set(context: UnlearnContext, prompts: list[str], count: int, seed: int) -> Conditioned:
    """`count` samples of the frozen model, cycling through `prompts` (sample i from seed + i)."""
    cycled = [prompts[i % len(prompts)] for i in range(count)]
    with keyed("params"):
        made = generated_set(context.pipeline, cycled, context.generation, seed, "forget samples")
    return Conditioned(made.inputs, cycled)


def retain_set(context: UnlearnContext, spec: DataSpec, seed: int) -> TrainingSet:
    """The retain data `spec` names; the erased concepts are left out (errors keyed `params.retain`)."""
    with keyed("params.retain"):
        return build_set(context.pipeline, spec, context.generation, context.model, seed, context.concept.targets,
                         str(context.data_dir) if context.data_dir else None, context.concept.kind)


def mapping_loss(module: FineTuneModule, x0: torch.Tensor, condition: torch.Tensor, target_condition: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """MSE(eps_theta(x_t, condition), sg[eps_theta(x_t, target_condition)]), shared x_0, noise, t."""
    noised = noise_samples(module.noise_scheduler, x0, generator)
    with torch.no_grad():
        target = module.unet(noised.inputs, noised.timesteps, encoder_hidden_states=target_condition).sample
    predicted = module.unet(noised.inputs, noised.timesteps, encoder_hidden_states=condition).sample
    return F.mse_loss(predicted.float(), target.float())


def retain_loss(module: FineTuneModule, retain: Conditioned, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The plain denoising loss of the retain samples at `index` under their own prompts."""
    x0, condition = retain.batch(index)
    return denoising_loss(module.unet, module.noise_scheduler, x0, condition, generator)


def sizes(forget: Conditioned, retain: TrainingSet) -> dict[str, Any]:
    """The record's account of the data."""
    return {"forget_samples": len(forget), "forget_prompts": forget.table, "retain": retain.source,
            "retain_samples": len(retain.inputs)}
