"""P4D (Chin et al., ICML 2024, "Prompting4Debugging: Red-Teaming Text-to-Image Diffusion Models
by Finding Problematic Prompts"; code joycenerd/P4D), as the UnlearnDiff repo runs it (its
`hard_prompt` attacker with the `P4D` task, `configs/*/hard_prompt_*_P4D_*.py`: lr 0.01, weight
decay 0.1), registered as `p4d` (PROTOCOL.md section 7).

Per prompt of the concept, on the loop UnlearnDiff uses (harness.attack.prompt.per_prompt: 50
fixed timesteps x 40 iterations, a judge's check after each round, stop at the first success,
pre-ASR counted): k prefix embeddings start at random real words; the forward pass uses each
one's nearest real word (cosine) and the gradient updates the embedding (PEZ's straight-through
projection), AdamW. Loss: the *unlearned* model's noise prediction under the adversarial prompt
matched to the *original* model's under the plain prompt, at the same noised x0_t (x0 the
original model's image of the prompt). The authors' object and style configs use k = 3; the
default here is their attacker's 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.attack.interface import AttackContext, AttackResult
from harness.attack.prompt.per_prompt import PerPromptParams, PrefixLoss, run_per_prompt
from harness.generate.suites import PromptRecord
from harness.registry import attack
from harness.train.prefix import PrefixEncoder
from harness.train.tokens import nearest_rows


@dataclass
class P4DParams(PerPromptParams):
    """`params` of `p4d` (the shared per-prompt params at the hard_prompt attacker's settings)."""


class HardPrefix:
    """k embeddings that feed their nearest real words (straight-through), started at random words."""

    def __init__(self, encoder: PrefixEncoder, params: P4DParams, generator: torch.Generator) -> None:
        self.table = encoder.word_table().float()
        start = torch.randint(0, encoder.vocabulary_size, (params.k,), generator=generator)
        self.vectors = self.table[start.to(self.table.device)].clone().requires_grad_(True)
        self.optimizer = torch.optim.AdamW([self.vectors], lr=params.lr, weight_decay=params.weight_decay)

    def embeddings(self, encoder: PrefixEncoder, generator: torch.Generator) -> torch.Tensor:
        nearest = self.table[self.choices(encoder)]
        return self.vectors + (nearest - self.vectors).detach()

    def project(self) -> None:
        """PEZ keeps the continuous embeddings between steps: nothing to do."""

    def choices(self, encoder: PrefixEncoder) -> torch.Tensor:
        return nearest_rows(self.vectors.detach(), self.table)


class MatchOriginal:
    """Each prompt's MSE between the unlearned model's prediction and the original model's under
    the plain prompt at the same noised input."""

    def __init__(self, original: Any, records: list[PromptRecord]) -> None:
        self.unet = original.unet.requires_grad_(False)
        with torch.no_grad():
            self.plain, _ = original.encode_prompt([r.prompt for r in records], self.unet.device, 1, False)

    def __call__(self, predicted: torch.Tensor, noised: torch.Tensor, wanted: torch.Tensor, timestep: torch.Tensor,
                 index: list[int]) -> torch.Tensor:
        with torch.no_grad():
            reference = self.unet(noised, timestep, encoder_hidden_states=self.plain[index].to(self.unet.dtype)).sample
        return ((predicted.float() - reference.float()) ** 2).flatten(1).mean(1)


@attack("p4d", params=P4DParams, reads={"concept", "original", "suites"}, control="esd")
def p4d(context: AttackContext, params: P4DParams) -> AttackResult:
    """P4D, per prompt on UnlearnDiff's schedule and stopping rule (harness.attack.interface)."""

    def match(original: Any, records: list[PromptRecord], targets: torch.Tensor) -> PrefixLoss:
        return MatchOriginal(original, records)

    return run_per_prompt(context, params, "p4d",
                          lambda encoder, generator: HardPrefix(encoder, params, generator), match)
