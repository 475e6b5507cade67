"""Running a training method through the fine-tuning engine and reporting it like any method:
the trained tensors, a mask of the entries that moved, and the run's steps, loss and seconds."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from harness.errors import keyed
from harness.train.engine import Objective, TrainParams, fine_tune
from harness.train.trainable import trainable_names
from harness.unlearn.method import UnlearnContext, UnlearnResult


def train_method(context: UnlearnContext, objective: Objective, params: TrainParams, info: dict[str, Any]) -> UnlearnResult:
    """Train the context's UNet toward `objective`; the result holds every trained parameter, and
    the mask is True where a trained entry differs from the model before training."""
    assert context.scratch is not None, "the unlearn stage gives training methods a scratch folder"
    with keyed("params"):
        before = _trained_before(context, params)
        outcome = fine_tune(context.pipeline, objective, params, context.scratch, context.settings_key,
                            context.job.method.name or context.job.method.method, context.device, context.runtime)
    masks = {name: tensor != before[name] for name, tensor in outcome.tensors.items()}
    record = {
        "params": dataclasses.asdict(params),
        "steps": outcome.steps,
        "final_loss": outcome.final_loss,
        "loss_first_last_10": [_mean(outcome.losses[:10]), _mean(outcome.losses[-10:])],
        "train_seconds": outcome.seconds,
        "resumed_from_step": outcome.resumed_from,
        "trained_parameters": len(outcome.tensors),
        "trained_entries": sum(t.numel() for t in outcome.tensors.values()),
        **info,
    }
    return UnlearnResult(masks=masks, tensors=outcome.tensors, info=record)


def _trained_before(context: UnlearnContext, params: TrainParams) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters the run trains (only those: ESD-x trains 5% of SD's UNet)."""
    parameters = dict(context.pipeline.unet.named_parameters())
    with keyed("trainable"):
        names = trainable_names(list(parameters), params.trainable) if params.trainable else []
    return {name: parameters[name].detach().float().cpu().clone() for name in names}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def concept_prompts(context: UnlearnContext, given: list[str]) -> list[str]:
    """The concept's prompts for training: the ones given, else a world's prompts of the concept
    (every paraphrase), else the concept's name as ESD's code uses it ("Van Gogh", "nudity")."""
    if given:
        return list(given)
    from harness.world import world_of_kind

    world = world_of_kind(context.concept.kind)
    if world is not None:
        return world.prompt_pairs(context.concept.target, context.concept.kind)[1]
    return [context.concept.target]
