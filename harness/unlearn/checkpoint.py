"""The registered method `checkpoint`: a model that was unlearned elsewhere, attacked as given.

`params: {path: FILE_OR_FOLDER}` names the unlearned model in the form its authors ship it
(harness.unlearn.checkpoint_forms: diffusers UNet tensors, a pipeline folder, a CompVis / LDM
state dict, a text-encoder release, a LoRA file). The form and the changed components are
recorded. Its tensors become the unlearned model (UNet and text encoder); the mask marks the
target-layer entries that are exactly zero in the checkpoint but not in the base model (what
pruning left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError, keyed
from harness.inputs import INPUT_PATH
from harness.models.components import changed_components, is_text_encoder
from harness.registry import method
from harness.unlearn.checkpoint_forms import CHANGES_ONLY, unlearned_tensors
from harness.unlearn.method import UnlearnContext, UnlearnResult


@dataclass
class CheckpointParams:
    """`params` of the `checkpoint` method."""

    path: str = field(metadata=INPUT_PATH)
    """The unlearned model: UNet tensors (.safetensors, .pt, .ckpt; diffusers or CompVis names), a diffusers
    pipeline, UNet or CLIPTextModel folder, a text-encoder state dict or a LoRA file."""


@method("checkpoint", params=CheckpointParams)
def checkpoint(context: UnlearnContext, params: CheckpointParams) -> UnlearnResult:
    """The given unlearned model (harness.unlearn.method)."""
    base = dict(context.pipeline.unet.named_parameters())
    with keyed("params.path"):
        tensors, form = unlearned_tensors(params.path, context.pipeline)
    layers = [name for name in context.layers if not is_text_encoder(name)]
    if form not in CHANGES_ONLY:  # a whole UNet, or UCE's changed tensors: the target layers must be there
        missing = [name for name in layers if name not in tensors]
        if missing:
            raise HarnessError(f"{params.path} has no target layer '{missing[0]}'", key="params.path")
    masks = {name: (tensors[name] == 0) & (base[name].detach().cpu() != 0) for name in layers if name in tensors}
    return UnlearnResult(masks=masks, tensors=tensors,
                         info={"params": {"path": params.path}, "form": form, "tensors": len(tensors),
                               "components": changed_components(tensors)})
