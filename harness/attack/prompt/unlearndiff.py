"""UnlearnDiff as published (Zhang et al., ECCV 2024, "To Generate or Not? Safety-Driven
Unlearned Diffusion Models Are Still Easy to Generate Unsafe Images ... For Now"; code
OPTML-Group/Diffusion-MU-Attack, `src/attackers/text_grad_.py`, `src/tasks/classifier_.py`,
`configs/*/text_grad_*.json`), registered as `unlearndiff` (PROTOCOL.md section 7).

Per prompt of the concept (the loop: harness.attack.prompt.per_prompt): k = 5 prefix tokens,
each a distribution over the vocabulary (uniform start, projected onto the simplex after every
step; harness.attack.prompt.relaxed), the forward pass a sampled word per position
(straight-through). Loss: the *unlearned* model's denoising error MSE(eps, eps_theta(x0_t, t,
prefix + prompt)), x0 the original model's image of that prompt with its own seed. Adam lr 1e-2,
weight decay 0.1 (L2, as torch.optim.Adam). Schedule: 50 fixed timesteps x 40 iterations, a
check after each round, stop at the first success: up to 2000 steps and 50 checks per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.attack.interface import AttackContext, AttackResult
from harness.attack.prompt.per_prompt import PerPromptParams, run_per_prompt
from harness.attack.prompt.relaxed import project_simplex, sample_one_hot
from harness.generate.suites import PromptRecord
from harness.registry import attack
from harness.train.prefix import PrefixEncoder


@dataclass
class UnlearnDiffParams(PerPromptParams):
    """`params` of `unlearndiff` (the shared per-prompt params at UnlearnDiff's settings)."""


class RelaxedPrefix:
    """k distributions over the words, uniform at the start, kept on the simplex."""

    def __init__(self, encoder: PrefixEncoder, params: UnlearnDiffParams, device: torch.device) -> None:
        size = encoder.vocabulary_size
        self.distribution = torch.full((params.k, size), 1 / size, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.distribution], lr=params.lr, weight_decay=params.weight_decay)

    def embeddings(self, encoder: PrefixEncoder, generator: torch.Generator) -> torch.Tensor:
        return encoder.prefix_embeddings(sample_one_hot(self.distribution, generator))

    def project(self) -> None:
        with torch.no_grad():
            self.distribution.copy_(project_simplex(self.distribution))

    def choices(self, encoder: PrefixEncoder) -> torch.Tensor:
        return self.distribution.detach().argmax(-1)


def denoising_error(predicted: torch.Tensor, noised: torch.Tensor, wanted: torch.Tensor, timestep: torch.Tensor,
                    index: list[int]) -> torch.Tensor:
    """Each prompt's MSE between the unlearned model's prediction and the noise (or v) it should predict."""
    return ((predicted.float() - wanted.float()) ** 2).flatten(1).mean(1)


@attack("unlearndiff", params=UnlearnDiffParams, reads={"concept", "original", "suites"}, control="esd")
def unlearndiff(context: AttackContext, params: UnlearnDiffParams) -> AttackResult:
    """UnlearnDiff, per prompt with its authors' schedule and stopping rule (harness.attack.interface)."""

    def no_state(original: Any, records: list[PromptRecord], targets: torch.Tensor) -> Any:
        return denoising_error

    return run_per_prompt(context, params, "unlearndiff",
                          lambda encoder, generator: RelaxedPrefix(encoder, params, context.device), no_state)
