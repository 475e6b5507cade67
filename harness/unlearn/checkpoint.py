"""The registered method `checkpoint`: a model that was unlearned elsewhere, attacked as given.

`params: {path: FILE_OR_FOLDER}` names the unlearned model in the form its authors ship it
(harness.unlearn.checkpoint_forms: diffusers UNet tensors, a pipeline folder, a CompVis / LDM
state dict; text-encoder releases and LoRA files are refused by name). The form is recorded. Its
tensors that are UNet parameters become the unlearned model; the mask marks the target-layer
entries that are exactly zero in the checkpoint but not in the base model (what pruning left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError, keyed
from harness.inputs import INPUT_PATH
from harness.registry import method
from harness.unlearn.checkpoint_forms import unet_tensors
from harness.unlearn.method import UnlearnContext, UnlearnResult


@dataclass
class CheckpointParams:
    """`params` of the `checkpoint` method."""

    path: str = field(metadata=INPUT_PATH)
    """The unlearned model: UNet tensors (.safetensors, .pt, .ckpt; diffusers or CompVis names) or a diffusers
    pipeline or UNet folder."""


@method("checkpoint", params=CheckpointParams)
def checkpoint(context: UnlearnContext, params: CheckpointParams) -> UnlearnResult:
    """The given unlearned model (harness.unlearn.method)."""
    base = dict(context.pipeline.unet.named_parameters())
    encoder = getattr(context.pipeline, "text_encoder", None)
    with keyed("params.path"):
        tensors, form = unet_tensors(params.path, {n: p.detach().cpu() for n, p in base.items()},
                                     context.pipeline.unet.config,
                                     {n: t.detach().cpu() for n, t in encoder.state_dict().items()} if encoder else None)
    missing = [name for name in context.layers if name not in tensors]
    if missing:
        raise HarnessError(f"{params.path} has no target layer '{missing[0]}'", key="params.path")
    masks = {name: (tensors[name] == 0) & (base[name].detach().cpu() != 0) for name in context.layers}
    return UnlearnResult(masks=masks, tensors=tensors, info={"params": {"path": params.path}, "form": form,
                                                               "tensors": len(tensors)})
