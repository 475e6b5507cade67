"""The named components a method may change, and one namespace for their tensors.

An unlearned model is the base pipeline with some tensors replaced. The tensors live in one
namespace over the pipeline's trainable components: UNet parameters under their own names (as
every output before this namespace had them), text-encoder parameters under `text_encoder.` +
their name in `pipeline.text_encoder` (AdvUnlearn's wrapper state dict uses the same prefix).
Every stage applies such a file the same way (harness.models.pipelines.apply_tensors), so a
changed text encoder is generated with and attacked exactly as changed UNet tensors are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

TEXT_ENCODER = "text_encoder."
"""The prefix of text-encoder tensors in the namespace."""


def is_text_encoder(name: str) -> bool:
    """Whether `name` names a text-encoder tensor (else a UNet one)."""
    return name.startswith(TEXT_ENCODER)


def model_parameters(pipeline: Any) -> dict[str, torch.nn.Parameter]:
    """The pipeline's parameters in the namespace: the UNet's, then the text encoder's (prefixed)
    when the pipeline has one."""
    parameters = dict(pipeline.unet.named_parameters())
    encoder = getattr(pipeline, "text_encoder", None)
    if encoder is not None:
        parameters.update({TEXT_ENCODER + name: p for name, p in encoder.named_parameters()})
    return parameters


def unet_part(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet's tensors of a namespace mapping (what weight revival reads)."""
    return {name: t for name, t in tensors.items() if not is_text_encoder(name)}


def changed_components(names: Iterable[str]) -> list[str]:
    """Which components a set of tensor names touches, in pipeline order."""
    names = list(names)
    return [c for c, hit in (("unet", any(not is_text_encoder(n) for n in names)),
                             ("text_encoder", any(is_text_encoder(n) for n in names))) if hit]

