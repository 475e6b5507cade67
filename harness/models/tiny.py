"""A tiny randomly initialised UNet with the SD-v1.x module layout (16 transformer blocks with
GEGLU feed-forwards under the same names), for tests and smoke runs without downloads."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def tiny_sd_unet(seed: int = 0, width: int = 32) -> UNet2DConditionModel:
    """SD's block structure (down 0-2 and up 1-3 with attentions, a mid block) at toy width."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(width, width, 2 * width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
