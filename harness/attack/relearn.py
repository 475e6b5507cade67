"""DiMRA, the relearning attack (seed 004), registered as `dimra`.

Threat model (PROTOCOL.md section 6): the attacker holds the unlearned weights and data that do
*not* contain the erased concept, and does not know which concept was erased. The attack
fine-tunes the unlearned model with the plain denoising loss E ||eps - eps_theta(x_t | c)||^2
on that auxiliary set: a world's real images of the other classes with their prompts (the
harness leaves the erased class out; the attack never learns which it is), a folder or
WebDataset of image + caption pairs, or the pretrained model's images of a prompt suite.
The trained tensors are written every `curve_every` steps, so the matrix scores a recovery
curve (erased and preserved accuracy against steps), not one number.

Faithful to the paper's setting (PROTOCOL.md section 6): the loss is the model's own pretraining
loss, prompt dropout included (`cond_dropout` of the captions become the empty prompt and
`neutral_fraction` a neutral prompt, the world's 10% and 10%; SD's own training dropped 10% to
the empty prompt); the budget is counted in passes over the attacker's data, and the published
budget (the default) is a sweep to 50 passes with a curve point every 5 (the world was
pretrained for about 67); generated attacker data (D_au: `data: {source: world-prompts}`, the
world's neutral and other classes' prompts, or given prompts or a suite) is drawn by the
*pretrained* model and a classifier drops what shows the erased concept (the
harness does it; the attack never learns the concept). `budget: quick` is 200 steps with a curve
point every 100 (0.6 of a pass over the world's 1,293 other digits): the main job's run, never
the silent default. Optimiser after a third-party re-implementation: AdamW lr 1e-5 (the world's
recipes sweep 1e-4, 3e-4, 1e-3), gradient clipping 1.0, every UNet parameter.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from annotated_types import Ge, Gt, Le

from harness.attack.interface import AttackContext, AttackResult
from harness.budgets import PUBLISHED, budget_record
from harness.errors import keyed
from harness.layout import AttackFiles
from harness.registry import attack
from harness.train.data import GENERATED_SOURCES, DataSpec, TrainingSet
from harness.train.denoise import denoising_loss
from harness.train.engine import FineTuneModule, Objective, Snapshots, TrainParams, fine_tune
from harness.world import world_of_source


@dataclass
class DiMRAParams(TrainParams):
    """`params` of the `dimra` attack."""

    BUDGETS: ClassVar[dict[str, dict[str, Any]]] = {
        PUBLISHED: {"passes": 50.0, "curve_every_passes": 5.0},
        "quick": {"steps": 200, "curve_every": 100},
    }
    ALTERNATIVES: ClassVar[tuple[tuple[str, str], ...]] = (("steps", "passes"), ("curve_every", "curve_every_passes"))
    budget: str = PUBLISHED
    """a named budget: published (50 passes, a curve point every 5) or quick (200 steps); keys beside it override it"""
    steps: int = 200
    batch_size: int = 4
    trainable: str | list[str] = "full"
    checkpoint_every: int = 50
    data: DataSpec = field(default_factory=DataSpec)
    """the auxiliary data (default: the world's real images of the classes not erased)"""
    curve_every: Annotated[int, Ge(1)] = 50
    """steps between the snapshots a recovery curve is scored at"""
    passes: Annotated[float, Gt(0)] | None = None
    """the budget in passes over the attacker's data (sets `steps`)"""
    curve_every_passes: Annotated[float, Gt(0)] | None = None
    """passes between the curve's snapshots (sets `curve_every`)"""
    cond_dropout: Annotated[float, Ge(0), Le(1)] = 0.1
    """share of captions replaced by the empty prompt (the model's pretraining dropout)"""
    neutral_fraction: Annotated[float, Ge(0), Le(1)] = 0.1
    """share of captions replaced by a neutral prompt (the world's; none on other models)"""
    generated_by: Literal["pretrained", "unlearned"] = "pretrained"
    """which model draws generated attacker data (D_au)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cond_dropout + self.neutral_fraction > 1:
            raise ValueError("cond_dropout + neutral_fraction must be at most 1")

    def in_steps(self, samples: int) -> DiMRAParams:
        """These params with `passes` and `curve_every_passes` turned into steps for a data set of
        `samples` (each pass: samples / (batch_size x accumulate) steps, at least one)."""
        per_pass = samples / (self.batch_size * self.accumulate)
        steps = self.steps if self.passes is None else max(1, math.ceil(self.passes * per_pass))
        every = self.curve_every if self.curve_every_passes is None else max(1, math.ceil(self.curve_every_passes * per_pass))
        return dataclasses.replace(self, steps=steps, curve_every=every, checkpoint_every=min(self.checkpoint_every, every))


class DenoisingObjective(Objective):
    """The pretraining loss on batches of a training set: the plain denoising loss, each caption
    replaced by the empty prompt (`dropout`) or a neutral prompt (`neutral`) at those rates."""

    def __init__(self, data: TrainingSet, batch_size: int, dropout: float = 0.0, neutral: float = 0.0,
                 neutral_prompts: tuple[str, ...] = ()) -> None:
        self.data, self.batch_size = data, batch_size
        self.dropout, self.neutral = dropout, (neutral if neutral_prompts else 0.0)
        self.neutral_prompts = list(neutral_prompts)

    def prepare(self, module: FineTuneModule) -> None:
        self.inputs = self.data.inputs.to(module.device)
        prompts = ["", *self.neutral_prompts, *self.data.prompts]
        self.index = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        self.embeddings = module.embed(list(self.index))

    def captions(self, chosen: list[int], generator: torch.Generator) -> list[str]:
        """Each drawn sample's caption after the dropout."""
        draws = torch.rand(len(chosen), generator=generator).tolist()
        picks = torch.randint(0, max(1, len(self.neutral_prompts)), (len(chosen),), generator=generator).tolist()
        return ["" if u < self.dropout else self.neutral_prompts[j] if u < self.dropout + self.neutral
                else self.data.prompts[i] for i, u, j in zip(chosen, draws, picks)]

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        chosen = torch.randint(0, len(self.inputs), (self.batch_size,), generator=generator)
        captions = self.captions(chosen.tolist(), generator)
        condition = self.embeddings[[self.index[c] for c in captions]]
        return denoising_loss(module.unet, module.noise_scheduler, self.inputs[chosen.to(module.device)], condition,
                              generator)


@attack("dimra", params=DiMRAParams, reads={"original"}, control="erasediff")
def dimra(context: AttackContext, params: DiMRAParams) -> AttackResult:
    """DiMRA, relearning on data without the concept (harness.attack.interface)."""
    generated = params.data.source in GENERATED_SOURCES
    drawn_by = context.original_pipeline() if generated and params.generated_by == "pretrained" else None
    pipeline = context.pipeline()
    with keyed("params.data"):
        data = context.auxiliary_set(drawn_by or pipeline, params.data, drawn_by_original=drawn_by is not None)
    del drawn_by
    world = world_of_source(context.model)
    neutral = tuple(world.neutral_prompts()) if world is not None else ()
    published_steps = DiMRAParams(**DiMRAParams.BUDGETS[PUBLISHED]).in_steps(len(data.inputs)).steps
    params = params.in_steps(len(data.inputs))
    files = AttackFiles(context.scratch)
    objective = DenoisingObjective(data, params.batch_size, params.cond_dropout, params.neutral_fraction, neutral)
    with keyed("params"):
        outcome = fine_tune(pipeline, objective, params, files.checkpoints,
                            context.settings_key, context.job.label, context.device, context.runtime,
                            snapshot=Snapshots(params.curve_every, files.snapshot))
    snapshots = {step: files.snapshot(step) for step in range(params.curve_every, outcome.steps, params.curve_every)
                 if files.snapshot(step).is_file()}
    info = {"steps": outcome.steps, "final_loss": outcome.final_loss, "train_seconds": outcome.seconds,
            "resumed_from_step": outcome.resumed_from, "data": data.source, "data_samples": len(data.inputs),
            "data_labels": sorted({label for label in data.labels if label}), "data_dropped": data.dropped,
            "neutral_prompts": list(neutral), "steps_per_pass": round(len(data.inputs) / (params.batch_size * params.accumulate), 3),
            "budget": budget_record(params, published_steps, len(data.inputs))}
    return AttackResult(tensors=outcome.tensors, info=info, snapshots=snapshots)
