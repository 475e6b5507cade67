"""The registered method `checkpoint`: a model that was unlearned elsewhere, attacked as given.

`params: {path: FILE_OR_FOLDER}` names the unlearned UNet (a `.safetensors` file, a `.pt`
state dict such as ConceptPrune's fp16 dump, or a diffusers folder). Its tensors that are UNet
parameters become the unlearned model; the mask marks the target-layer entries that are exactly
zero in the checkpoint but not in the base model (what pruning left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.inputs import INPUT_PATH
from harness.models.checkpoints import load_state_dict
from harness.registry import method
from harness.unlearn.method import UnlearnContext, UnlearnResult


@dataclass
class CheckpointParams:
    """`params` of the `checkpoint` method."""

    path: str = field(metadata=INPUT_PATH)
    """The unlearned UNet: .safetensors, .pt state dict, or a diffusers pipeline or UNet folder."""


@method("checkpoint", params=CheckpointParams)
def checkpoint(context: UnlearnContext, params: CheckpointParams) -> UnlearnResult:
    """The given unlearned model (harness.unlearn.method)."""
    state = load_state_dict(params.path)
    base = dict(context.pipeline.unet.named_parameters())
    tensors = {name: value for name, value in state.items() if name in base and value.shape == base[name].shape}
    if not tensors:
        raise HarnessError(f"{params.path} holds no tensor of the base model's UNet", key="params.path")
    missing = [name for name in context.layers if name not in tensors]
    if missing:
        raise HarnessError(f"{params.path} has no target layer '{missing[0]}'", key="params.path")
    masks = {name: (tensors[name] == 0) & (base[name].detach().cpu() != 0) for name in context.layers}
    return UnlearnResult(masks=masks, tensors=tensors, info={"params": {"path": params.path}, "tensors": len(tensors)})
