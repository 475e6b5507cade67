"""A randomly initialised, SD-shaped StableDiffusionPipeline small enough for CPU tests.

Same component classes and parameter names as Stable Diffusion v1.x (cross-attention transformer
blocks with GEGLU feed-forwards in down, mid and up blocks; VAE; CLIP text encoder; PNDM), only
tiny. The tokenizer is a byte-level CLIP BPE with a character vocabulary and no merges, built in
memory, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_FFN_LAYERS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight",
    "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2.weight",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight",
]
"""The parameters `harness.recipe.SD_FFN_LAYERS` selects in the tiny UNet, in the UNet's
parameter order (diffusers registers mid_block after up_blocks)."""


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """CLIP's byte-level BPE over single characters: every printable byte, alone or word-final."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        for token in (char, f"{char}</w>"):
            vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A fresh tiny pipeline, deterministic in `seed`; 64x64 images, 8x8 latents."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_tiny_sd_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline as a diffusers folder (model_index.json and components)."""
    tiny_sd_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder
