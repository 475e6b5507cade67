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
from harness.errors import HarnessError, keyed
from harness.layout import AttackFiles
from harness.registry import attack
from harness.train.data import DataSpec, TrainingSet
from harness.train.denoise import denoising_loss
from harness.train.engine import FineTuneModule, Objective, Snapshots, TrainParams, fine_tune


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


@attack("dimra", params=DiMRAParams)
def dimra(context: AttackContext, params: DiMRAParams) -> AttackResult:
    """DiMRA, relearning on data without the concept (harness.attack.interface)."""
    pipeline = context.pipeline()
    with keyed("params.data"):
        data = context.auxiliary_set(pipeline, params.data)
    if not len(data.inputs):
        raise HarnessError("the auxiliary set is empty", key="params.data")
    files = AttackFiles(context.scratch)
    with keyed("params"):
        outcome = fine_tune(pipeline, DenoisingObjective(data, params.batch_size), params, files.checkpoints,
                            context.settings_key, context.job.label, context.device, context.runtime,
                            snapshot=Snapshots(params.curve_every, files.snapshot))
    snapshots = {step: files.snapshot(step) for step in range(params.curve_every, outcome.steps + 1, params.curve_every)
                 if files.snapshot(step).is_file()}
    info = {"steps": outcome.steps, "final_loss": outcome.final_loss, "train_seconds": outcome.seconds,
            "resumed_from_step": outcome.resumed_from, "data": data.source, "data_samples": len(data.inputs),
            "data_labels": sorted({label for label in data.labels if label})}
    return AttackResult(tensors=outcome.tensors, info=info, snapshots=snapshots)
