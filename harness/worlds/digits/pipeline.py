"""The world's text-to-image pipeline: a pixel-space diffusers UNet with SD-named GEGLU feed-forwards.

`DigitsPipeline` is called like diffusers' StableDiffusionPipeline (prompt, steps, guidance,
generator, output_type), so generation code drives either one unchanged. The unconditional and
conditional halves go through the UNet in one batch, as in SD, so hooks see both. Images are
1-channel; `pt` output is float (N, 1, H, W) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from harness import registry
from harness.errors import HarnessError
from harness.worlds.digits.text import TEXT_WIDTH, build_text_encoder, build_tokenizer

IMAGE_SIZE = 16
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0

UNET_CONFIG: dict = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}
"""16x16 pixels; cross-attention at 8x8 and 4x4 (and the 4x4 middle), each a transformer block of
width 64 whose GEGLU feed-forward has `ff.net.0.proj` (512, 64) and `ff.net.2` (64, 256)."""

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
    "steps_offset": 1,
}
"""Shared by training (DDPM noise) and sampling (DDIM), so the two can never disagree. Sampling
settings chosen by measurement (BENCHMARKS.md, "Miniature world"): clipping the predicted clean
image (`clip_sample`) under guidance made samples worse the longer the model trained, and
starting at t=999 (`trailing`), where alpha_bar is 2e-9, amplifies noise-prediction error 2e4-fold."""


@registry.pipeline("DigitsPipeline")
class DigitsPipeline(DiffusionPipeline):
    """Text-to-image over 16x16 grey digits: tokenizer -> CLIP text encoder -> UNet -> DDIM."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text-encoder hidden states (N, 16, 64) of the prompts and, with guidance, of the negative
        prompts (default empty): StableDiffusionPipeline.encode_prompt's signature and result (like
        it, differentiable: prompt attacks train through it)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        embeddings = self._hidden_states(prompts)
        if not do_classifier_free_guidance:
            return embeddings, None
        negatives = negative_prompt if negative_prompt is not None else ""
        negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
        if len(negatives) != len(prompts):
            negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        return embeddings, self._hidden_states(negatives)

    def _hidden_states(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per prompt (times `num_images_per_prompt`); guidance > 1 uses CFG."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if output_type not in ("pil", "pt", "np"):
            raise HarnessError(f"output_type: expected 'pil', 'pt' or 'np', got '{output_type}'")
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % factor or width % factor:
            raise HarnessError(f"height/width: must be multiples of {factor}, got {height}x{width}")
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise HarnessError(f"generator: {len(generator)} generators for {len(prompts)} images")

        cfg = guidance_scale > 1.0
        context, negative = self.encode_prompt(prompt, None, num_images_per_prompt, cfg, negative_prompt)
        if cfg:
            context = torch.cat([negative, context])

        device, dtype = self.unet.device, self.unet.dtype
        shape = (len(prompts), self.unet.config.in_channels, height, width)
        sample = latents.to(device, dtype) if latents is not None else randn_tensor(
            shape, generator=generator, device=device, dtype=dtype
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([sample, sample]) if cfg else sample
            noise = self.unet(model_input, t, encoder_hidden_states=context).sample
            if cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            sample = self.scheduler.step(noise, t, sample).prev_sample

        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        elif output_type == "pil":
            array = (images[:, 0].cpu().numpy() * 255).round().astype(np.uint8)
            images = [Image.fromarray(a, mode="L") for a in array]
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def build_untrained_pipeline(seed: int = 0) -> DigitsPipeline:
    """A randomly initialised world pipeline, deterministic in `seed`, for tests and training."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(tokenizer)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    pipeline = DigitsPipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
