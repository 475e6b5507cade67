"""Test helper: a diffusers SD-v1 UNet state dict under the CompVis/LDM names (the inverse of
diffusers' conversion, as diffusers' own scripts/convert_diffusers_to_original_stable_diffusion.py
writes it), to produce checkpoints in the form ESD and SalUn release."""

from __future__ import annotations

import torch

_TOP = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
           ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def _layer_prefixes() -> list[tuple[str, str]]:
    pairs = []
    for i in range(4):
        for j in range(2):
            pairs.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < 3:
                pairs.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            pairs.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i > 0:
                pairs.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < 3:
            pairs.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (diffusers names) under `model.diffusion_model.` + LDM names."""
    out = {}
    for name, tensor in state.items():
        new = name
        for ldm, hf in _TOP:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
        if "resnets" in new:
            for ldm, hf in _RESNET:
                new = new.replace(hf, ldm)
        for ldm, hf in _layer_prefixes():
            new = new.replace(hf, ldm)
        out["model.diffusion_model." + new] = tensor
    return out
