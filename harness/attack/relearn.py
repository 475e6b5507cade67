"""DiMRA, the relearning attack (seed 004), registered as `dimra`.

Threat model (PROTOCOL.md section 6): the attacker holds the unlearned weights and data that do
*not* contain the erased concept, and does not know which concept was erased. The attack
fine-tunes the unlearned model with the plain denoising loss E ||eps - eps_theta(x_t | c)||^2
on that auxiliary set: a world's real images of the other classes with their prompts (the
harness leaves the erased class out; the attack never learns which it is), a folder or
WebDataset of image + caption pairs, or the pretrained model's images of a prompt suite.
The trained tensors are written every `curve_every` steps, so the matrix scores a recovery
curve (erased and preserved accuracy against steps), not one number. Defaults after a
third-party re-implementation: AdamW lr 1e-5, gradient clipping 1.0, 200 steps, every UNet
parameter, a snapshot every 50 steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
from annotated_types import Ge

from harness.attack.interface import AttackContext, AttackResult
from harness.config import parse_dataclass
from harness.errors import HarnessError
from harness.train.data import DataSpec, TrainingSet
from harness.train.denoise import denoising_loss
from harness.train.engine import FineTuneModule, Objective, TrainParams, fine_tune
from harness.layout import AttackFiles


@dataclass
class DiMRAParams(TrainParams):
    """`params` of the `dimra` attack."""

    steps: int = 200
    batch_size: int = 4
    trainable: str | list[str] = "full"
    checkpoint_every: int = 50
    data: DataSpec = field(default_factory=DataSpec)
    """the auxiliary data (default: the world's real images of the classes not erased)"""
    curve_every: Annotated[int, Ge(1)] = 50
    """steps between the snapshots a recovery curve is scored at"""


class DenoisingObjective(Objective):
    """The plain denoising loss on batches of a training set."""

    def __init__(self, data: TrainingSet, batch_size: int) -> None:
        self.data, self.batch_size = data, batch_size

    def prepare(self, module: FineTuneModule) -> None:
        self.inputs = self.data.inputs.to(module.device)
        self.index = {p: i for i, p in enumerate(dict.fromkeys(self.data.prompts))}
        self.embeddings = module.embed(list(self.index))

    def loss(self, module: FineTuneModule, generator: torch.Generator) -> torch.Tensor:
        chosen = torch.randint(0, len(self.inputs), (self.batch_size,), generator=generator)
        condition = self.embeddings[[self.index[self.data.prompts[i]] for i in chosen.tolist()]]
        return denoising_loss(module.unet, module.noise_scheduler, self.inputs[chosen.to(module.device)], condition,
                              generator)


def dimra(context: AttackContext, params: dict) -> AttackResult:
    """The registered attack `dimra` (signature in harness.attack.interface)."""
    settings = parse_dataclass(DiMRAParams, params, context.key("params"))
    pipeline = context.pipeline()
    data = context.auxiliary_set(pipeline, settings.data, context.key("params.data"))
    if not len(data.inputs):
        raise HarnessError(f"{context.key('params.data')}: the auxiliary set is empty")
    files = AttackFiles(context.scratch)
    outcome = fine_tune(pipeline, DenoisingObjective(data, settings.batch_size), settings, files.checkpoints,
                        context.settings_key, context.key("params"), context.device, context.runtime,
                        snapshot=(settings.curve_every, files.snapshot))
    snapshots = {step: files.snapshot(step) for step in range(settings.curve_every, outcome.steps + 1, settings.curve_every)
                 if files.snapshot(step).is_file()}
    info = {"steps": outcome.steps, "final_loss": outcome.final_loss, "train_seconds": outcome.seconds,
            "resumed_from_step": outcome.resumed_from, "data": data.source, "data_samples": len(data.inputs),
            "data_labels": sorted({label for label in data.labels if label})}
    return AttackResult(tensors=outcome.tensors, info=info, snapshots=snapshots)


dimra.params_type = DiMRAParams  # type: ignore[attr-defined]  # checked before any work (harness.experiment.plan)
