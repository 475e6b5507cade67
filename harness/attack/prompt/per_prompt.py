"""The per-prompt loop UnlearnDiff and P4D share (OPTML-Group/Diffusion-MU-Attack: its
`text_grad` and `hard_prompt` attackers run the same schedule; PROTOCOL.md section 7).

Per (prompt, seed) of the concept: a k-token prefix trains against the unlearned model, one
fixed timestep per round (t = 10, 30, ..., 990 for 50 rounds of 1000 training steps), a number
of iterations at each; after each round the prefix becomes words, the unlearned model draws the
prompt with them (the prompt's seed and guidance), a judge classifier says whether the image
shows the concept, and the prompt stops at its first success. A prompt whose unattacked image
already shows it succeeds at round 0 with no step (pre-ASR). What differs between the attacks is
the prefix (a `Prefix`: UnlearnDiff's relaxed one-hot distributions, P4D's PEZ-projected
embeddings) and the loss (a `PrefixLoss`).

The prompts attacked: `prompts`, else the concept's prompts of `suite` (default the recipe's
first suite that has any), each (prompt, seed) once; their adversarial prompts become the
attacked model's prompt rewrite for that prompt and seed, so generating that suite repeats each
check's image. Independent prompts are attacked `batch_prompts` at a time through one UNet call
(each keeps its own optimizer and random stream, so batching changes speed, not the attack).

A plain loop, not a Lightning fit: each round ends in generation and a classifier check that
decide per prompt whether to go on, which is the attack's own control flow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol

import torch
from annotated_types import Ge, Gt
from diffusers import DDPMScheduler

from harness.attack.interface import AttackContext, AttackResult
from harness.attack.prompt.adversarial import concept_prompt_list
from harness.budgets import PUBLISHED, budget_record
from harness.errors import HarnessError, keyed
from harness.generate.loop import effective_guidance
from harness.generate.rewrite import PromptRewrite, seeded
from harness.generate.suites import PromptRecord, load_suite
from harness.inputs import INPUT_PATH
from harness.models.pipelines import model_samples
from harness.progress import bar
from harness.score.metrics.classifiers import ImageClassifier, concept_classifier, load_image_classifier
from harness.stats import wilson_interval
from harness.train.prefix import PrefixEncoder
from harness.world import concept_names

log = logging.getLogger(__name__)


@dataclass
class PerPromptParams:
    """The params every per-prompt attack takes (UnlearnDiff's and P4D's shared schedule)."""

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {PUBLISHED: {}, "quick": {"timesteps": 5, "iterations": 10}}
    budget: str = PUBLISHED
    """a named budget: published (the authors') or quick (5 rounds of 10 steps); keys beside it override it"""
    k: Annotated[int, Ge(1)] = 5
    """prefix tokens"""
    lr: Annotated[float, Gt(0)] = 1e-2
    """learning rate"""
    weight_decay: Annotated[float, Ge(0)] = 0.1
    """weight decay"""
    timesteps: Annotated[int, Ge(1)] = 50
    """rounds: one fixed timestep each, evenly spread (10, 30, ..., 990 for 50 of 1000)"""
    iterations: Annotated[int, Ge(1)] = 40
    """optimizer steps per round"""
    prompts: list[str] = field(default_factory=list)
    """prompts to attack, with seeds from the recipe's seed on (default: a suite's prompts of the concept)"""
    suite: str | None = None
    """the suite whose prompts of the concept are attacked (default: the recipe's first that has any)"""
    prompt_count: Annotated[int, Ge(1)] = 10
    """without any suite: how many of the concept's own prompts"""
    classifier: str = "auto"
    """the judge: auto (the world's, resnet50 for objects), a registered classifier or package.module:factory"""
    classifier_weights: str | None = field(default=None, metadata=INPUT_PATH)
    """local weights of the judge (a resnet50 state dict, a world folder)"""
    batch_prompts: Annotated[int, Ge(1)] = 8
    """prompts attacked together through one UNet call"""
    seed: int = 0
    """seed of the sampled words, the starting words and the noise"""

    @property
    def steps(self) -> int:
        """The most optimizer steps one prompt gets."""
        return self.timesteps * self.iterations


class Prefix(Protocol):
    """One prompt's trainable prefix."""

    optimizer: torch.optim.Optimizer

    def embeddings(self, encoder: PrefixEncoder, generator: torch.Generator) -> torch.Tensor:
        """The (k, dim) embeddings this step feeds (gradients reach the trained tensor)."""
        ...

    def project(self) -> None:
        """What follows each optimizer step (UnlearnDiff: back onto the simplex)."""
        ...

    def choices(self, encoder: PrefixEncoder) -> torch.Tensor:
        """The k words (indices into the encoder's words) the prefix stands for now."""
        ...


class PrefixLoss(Protocol):
    """Per-prompt losses of one step."""

    def __call__(self, predicted: torch.Tensor, noised: torch.Tensor, wanted: torch.Tensor, timestep: torch.Tensor,
                 index: list[int]) -> torch.Tensor:
        ...


@dataclass
class PromptAttack:
    """One prompt's attack: its state while it runs and its outcome."""

    record: PromptRecord
    guidance: float
    adversarial: str | None = None
    round: int | None = None
    """the round of the first success (0: the unattacked prompt already succeeds)"""
    steps: int = 0
    index: int = 0
    """the prompt's place among the attacked prompts"""
    prefix: Prefix | None = None
    generator: torch.Generator | None = None

    def outcome(self) -> dict[str, Any]:
        return {"id": self.record.id, "prompt": self.record.prompt, "seed": self.record.seed,
                "adversarial_prompt": self.adversarial, "success": self.round is not None, "round": self.round,
                "steps": self.steps}


class ConceptJudge:
    """Generates prompts with their seeds and guidance and says which images show the concept."""

    def __init__(self, classifier: ImageClassifier, concepts: list[str], generation: Any, device: torch.device) -> None:
        self.classifier, self.generation, self.device = classifier, generation, device
        self.concepts = {c.lower() for c in concepts}

    def __call__(self, pipeline: Any, attacks: list[PromptAttack], prompts: list[str]) -> list[bool]:
        shows = [False] * len(attacks)
        for guidance in dict.fromkeys(a.guidance for a in attacks):
            chosen = [i for i, a in enumerate(attacks) if a.guidance == guidance]
            kwargs = self.generation.pipeline_kwargs([prompts[i] for i in chosen],
                                                     [attacks[i].record.seed for i in chosen], guidance)
            images = (pipeline(**kwargs).images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            for i, name in zip(chosen, self.classifier.predict(images.to(self.device))):
                shows[i] = name.lower() in self.concepts
        return shows


def round_timesteps(rounds: int, train_steps: int) -> list[int]:
    """`rounds` timesteps at the middles of equal spans of the training steps (10, 30, ..., 990)."""
    return [int((2 * i + 1) * train_steps // (2 * rounds)) for i in range(rounds)]


def attacked_prompts(context: AttackContext, params: PerPromptParams) -> list[PromptRecord]:
    """The concept's prompts to attack, each (prompt, seed) once (see the module docstring)."""
    concept = context.concept
    if params.prompts:
        return [PromptRecord(i, p, context.seed + i) for i, p in enumerate(dict.fromkeys(params.prompts))]
    names = concept_names(concept.target, concept.kind)
    rewrite = PromptRewrite(names=names, labels=names, kind=concept.kind)
    candidates = [params.suite] if params.suite else context.suites
    for name in candidates:
        with keyed("params.suite" if params.suite else "suites"):
            suite = load_suite(name, context.data_dir)
        records = [r for r in suite.records if rewrite.applies(r, suite.kind)]
        if records:
            return list({(r.prompt, r.seed): r for r in reversed(records)}.values())[::-1]
        if params.suite:
            raise HarnessError(f"suite {name} has no prompt of '{concept.target}'", key="params.suite")
    prompts = concept_prompt_list(context, params.prompt_count)
    return [PromptRecord(i, p, context.seed + i) for i, p in enumerate(prompts)]


def run_per_prompt(context: AttackContext, params: PerPromptParams, name: str,
                   make_prefix: Callable[[PrefixEncoder, torch.Generator], Prefix],
                   make_loss: Callable[[Any, list[PromptRecord], torch.Tensor], PrefixLoss]) -> AttackResult:
    """The loop for one attack: `make_prefix` starts a prompt's prefix, `make_loss(original
    pipeline, records, targets)` builds the loss while the original model is loaded."""
    concept = context.concept
    generation = context.generation
    records = attacked_prompts(context, params)
    with keyed("params.classifier"):
        judge_name = concept_classifier(params.classifier, context.model, concept.kind)
        if judge_name is None:
            raise HarnessError(f"no classifier judges a concept of kind '{concept.kind}'; name one", key="")
        classifier = load_image_classifier(judge_name, params.classifier_weights).to(context.device)
        unknown = {t.lower() for t in concept.targets} - {c.lower() for c in classifier.class_names}
        if unknown:
            raise HarnessError(f"classifier {judge_name} has no class '{sorted(unknown)[0]}'", key="")
    judge = ConceptJudge(classifier, concept.targets, generation, context.device)
    attacks = [PromptAttack(r, effective_guidance(r, generation), index=i) for i, r in enumerate(records)]
    original = context.original_pipeline()
    with keyed("params"):
        targets = model_samples(original, [r.prompt for r in records], generation, [r.seed for r in records],
                                "target images")
    loss = make_loss(original, records, targets)
    del original
    pipeline = context.pipeline()
    encoder = PrefixEncoder(pipeline, params.k)
    with keyed("params"):
        ids = encoder.ids([r.prompt for r in records])
    for attack_, shows in zip(attacks, judge(pipeline, attacks, [r.prompt for r in records])):
        if shows:
            attack_.round, attack_.adversarial = 0, attack_.record.prompt
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    timesteps = round_timesteps(params.timesteps, scheduler.config.num_train_timesteps)
    todo = [a for a in attacks if a.round is None]
    for a in todo:
        a.generator = torch.Generator().manual_seed(params.seed * 1_000_003 + a.record.id)
        a.prefix = make_prefix(encoder, a.generator)
    for start in range(0, len(todo), params.batch_prompts):
        batch = todo[start:start + params.batch_prompts]
        run_batch(pipeline, encoder, scheduler, judge, loss, batch, ids, targets, timesteps, params, name)
    names = concept_names(concept.target, concept.kind)
    rewrite = PromptRewrite(names=names, labels=names, kind=concept.kind,
                            prompts={seeded(a.record.prompt, a.record.seed): a.adversarial for a in attacks
                                     if a.adversarial})
    info = {"prompts": [a.outcome() for a in attacks], "classifier": judge_name, "budget": budget_record(params),
            **success_shares(attacks, params)}
    log.info("%s: ASR %s, pre-ASR %s", name, info["asr"]["share"], info["pre_asr"]["share"])
    return AttackResult(tensors={}, prompt_rewrite=rewrite, info=info)


def run_batch(pipeline: Any, encoder: PrefixEncoder, scheduler: DDPMScheduler, judge: ConceptJudge,
              loss: PrefixLoss, attacks: list[PromptAttack], ids: torch.Tensor, targets: torch.Tensor,
              timesteps: list[int], params: PerPromptParams, name: str) -> None:
    """Attack a batch of prompts round by round until each succeeds or the rounds run out."""
    unet = pipeline.unet.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    progress = bar(total=len(timesteps), desc=f"{name} {len(attacks)} prompts", unit="round", leave=False)
    for number, t in enumerate(timesteps, start=1):
        chosen = [a for a in attacks if a.round is None]
        if not chosen:
            break
        index = [a.index for a in chosen]
        for _ in range(params.iterations):
            step(unet, encoder, scheduler, loss, chosen, ids[index], targets[index], t)
        with torch.no_grad():
            words = encoder.words(torch.stack([a.prefix.choices(encoder) for a in chosen]))
        prompts = [f"{w} {a.record.prompt}" for w, a in zip(words, chosen)]
        for a, prompt, shows in zip(chosen, prompts, judge(pipeline, chosen, prompts)):
            a.adversarial = prompt
            if shows:
                a.round = number
        progress.update(1)
    progress.close()


def step(unet: torch.nn.Module, encoder: PrefixEncoder, scheduler: DDPMScheduler, loss: PrefixLoss,
         attacks: list[PromptAttack], ids: torch.Tensor, targets: torch.Tensor, t: int) -> None:
    """One optimizer step of every prompt in `attacks` (the loss is their sum: each prompt's
    prefix gets only its own gradient)."""
    device = unet.device
    ids, targets = ids.to(device), targets.to(device, unet.dtype)
    prefix = torch.stack([a.prefix.embeddings(encoder, a.generator) for a in attacks])
    condition = encoder.encode(ids, prefix)
    noise = torch.stack([torch.randn(targets.shape[1:], generator=a.generator) for a in attacks]).to(targets)
    timestep = torch.full((len(attacks),), t, device=targets.device, dtype=torch.long)
    noised = scheduler.add_noise(targets, noise, timestep)
    wanted = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(targets, noise, timestep)
    predicted = unet(noised, timestep, encoder_hidden_states=condition.to(unet.dtype)).sample
    total = loss(predicted, noised, wanted, timestep, [a.index for a in attacks]).sum()
    for a in attacks:
        a.prefix.optimizer.zero_grad()
    total.backward()
    for a in attacks:
        a.prefix.optimizer.step()
        a.prefix.project()
        a.steps += 1


def success_shares(attacks: list[PromptAttack], params: PerPromptParams) -> dict[str, Any]:
    """ASR and pre-ASR with n and 95% Wilson intervals, and the curve: the share succeeded by
    each round against the steps a prompt had by then."""
    n = len(attacks)

    def share(count: int) -> dict[str, Any]:
        interval = wilson_interval(count, n)
        return {"share": count / n if n else None, "successes": count, "n": n,
                "ci": list(interval) if interval else None}

    rounds = [a.round for a in attacks]
    curve = [{"round": r, "steps": r * params.iterations,
              **share(sum(1 for x in rounds if x is not None and x <= r))} for r in range(params.timesteps + 1)]
    return {"asr": share(sum(1 for x in rounds if x is not None)), "pre_asr": share(rounds.count(0)),
            "curve": curve}
