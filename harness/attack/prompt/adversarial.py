"""A universal adversarial prefix, registered as `adversarial-prefix`: a variant of UnlearnDiff
(Zhang et al., ECCV 2024; the published per-prompt attack is `unlearndiff`,
harness.attack.prompt.unlearndiff) with the P4D baseline's PEZ-style optimiser.

`tokens` prefix embeddings are optimised so that the *unlearned* model's denoising loss
E ||eps - eps_theta(x_t, c(prefix + p), t)|| on target images is minimal, every weight frozen
(PROTOCOL.md section 7). The targets are the original model's images of the concept's prompts
p (`images_per_prompt` seeds each), so the attack declares `original` as well as `concept`.
By default the prompt is hard, as in the authors' `hard_prompt` attacker: the forward pass uses
each embedding's nearest real word (cosine), the gradient updates the embedding (PEZ), and the
prefix at the end is those words. `soft: true` keeps the continuous embeddings as new tokens
(the soft-prompt result). Defaults after the authors' code: 5 prefix tokens started at random
real words, Adam(W) lr 1e-2 with weight decay 0.1.

One deviation: the authors optimise a prefix per prompt, because their attack comes after the
prompts are known; in the matrix an attack comes before the suites, so one prefix is learned for
all the concept's prompts (a universal prefix) and put before every prompt of the concept at
generation. The attack success rate is then the erased accuracy of the attacked row: the share
of the concept's prompts whose image is classified as the concept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge

from harness.attack.interface import AttackContext, AttackResult
from harness.errors import keyed
from harness.generate.rewrite import PromptRewrite
from harness.layout import AttackFiles
from harness.registry import attack
from harness.train.data import generated_set
from harness.train.engine import OptimParams, fine_tune
from harness.train.tokens import TokenObjective, projected_words, random_words
from harness.unlearn.prompts import prompt_pairs, resolve_data_dir
from harness.world import concept_names


@dataclass
class AdversarialParams(OptimParams):
    """`params` of `adversarial-prefix`."""

    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 0.1
    batch_size: int = 4
    tokens: Annotated[int, Ge(1)] = 5
    """how many prefix tokens are optimised"""
    soft: bool = False
    """keep the continuous embeddings (new tokens) instead of projecting to real words"""
    prompts: list[str] = field(default_factory=list)
    """the concept's prompts the targets are made from (default: the first `prompt_count` of its prompts)"""
    prompt_count: Annotated[int, Ge(1)] = 10
    """how many of the concept's own prompts, when `prompts` is not given"""
    images_per_prompt: Annotated[int, Ge(1)] = 2
    """target images the original model makes per concept prompt"""


class PrefixObjective(TokenObjective):
    """The unlearned model's denoising loss on the targets with the prefix before their prompts."""

    def __init__(self, targets: torch.Tensor, prompts: list[str], names: list[str], init: torch.Tensor,
                 batch_size: int, project: bool) -> None:
        super().__init__(targets, names, init, batch_size, project)
        self.prompts = prompts

    def captions(self, index: list[int], generator: torch.Generator) -> list[str]:
        prefix = " ".join(self.tokens)
        return [f"{prefix} {self.prompts[i]}" for i in index]


def concept_prompt_list(context: AttackContext, count: int) -> list[str]:
    """The first `count` of the concept's prompts (a world's, else the concept kind's templates)."""
    concept = context.concept
    data_dir = resolve_data_dir(context.data_dir, concept.data_dir)
    return prompt_pairs(concept, data_dir, context.fidelity).target[:count]


@attack("adversarial-prefix", params=AdversarialParams, reads={"concept", "original"}, control="esd")
def adversarial_prompt(context: AttackContext, params: AdversarialParams) -> AttackResult:
    """A universal adversarial prefix (UnlearnDiff-style; harness.attack.interface)."""
    concept = context.concept
    prompts = list(params.prompts) or concept_prompt_list(context, params.prompt_count)
    original = context.original_pipeline()
    chosen = [p for p in prompts for _ in range(params.images_per_prompt)]
    with keyed("params"):
        targets = generated_set(original, chosen, context.generation, context.seed, "target images")
    del original
    pipeline = context.pipeline()
    names = [f"<adv{i}>" for i in range(params.tokens)]
    start_ids, init = random_words(pipeline, params.tokens, torch.Generator().manual_seed(params.seed))
    objective = PrefixObjective(targets.inputs, targets.prompts, names, init, params.batch_size, not params.soft)
    with keyed("params"):
        outcome = fine_tune(pipeline, objective, params, AttackFiles(context.scratch).checkpoints,
                            context.settings_key, context.job.label, context.device, context.runtime)
    vectors = outcome.extra["tokens"]
    labels = concept_names(concept.target, concept.kind)
    info = {"steps": outcome.steps, "final_loss": outcome.final_loss, "train_seconds": outcome.seconds,
            "resumed_from_step": outcome.resumed_from, "targets": len(targets.inputs), "prompts": prompts,
            "start_words": pipeline.tokenizer.decode(start_ids).strip(), "soft": params.soft}
    if params.soft:
        rewrite = PromptRewrite(names=labels, labels=labels, kind=concept.kind, prefix=" ".join(names))
        return AttackResult(tensors={}, tokens=dict(zip(names, vectors)), prompt_rewrite=rewrite, info=info)
    ids, words = projected_words(pipeline, vectors)
    rewrite = PromptRewrite(names=labels, labels=labels, kind=concept.kind, prefix=words)
    return AttackResult(tensors={}, prompt_rewrite=rewrite, info=info | {"prefix": words, "prefix_ids": ids})
