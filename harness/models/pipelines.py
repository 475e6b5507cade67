"""Loading a text-to-image pipeline by name and writing changed UNet tensors into it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from harness.errors import HarnessError
from harness.models.checkpoints import is_hub_id, resolve_local

log = logging.getLogger(__name__)


def load_pipeline(
    source: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """A pipeline from a hub id, a local diffusers folder or `zoo:NAME`; safety checker off."""
    if is_hub_id(source):
        location: str | Path = source
        class_name = "StableDiffusionPipeline"
    else:
        location = resolve_local(source)
        index = location / "model_index.json"
        if not index.is_file():
            raise HarnessError(f"{source}: not a pipeline (no model_index.json in {location})")
        class_name = json.loads(index.read_text()).get("_class_name", "")
    if class_name == "DigitsPipeline":
        from harness.models.zoo.pipeline import DigitsPipeline

        pipeline = DigitsPipeline.from_pretrained(location, dtype=dtype)
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False} if "StableDiffusion" in class_name else {}
        try:
            pipeline = DiffusionPipeline.from_pretrained(location, dtype=dtype, **extra)
        except OSError as error:
            raise HarnessError(f"{source}: cannot load the pipeline ({str(error).splitlines()[0]})") from None
    log.info("loaded %s from %s", class_name, location)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def apply_tensors(pipeline: DiffusionPipeline, tensors: dict[str, torch.Tensor], where: str = "tensors") -> None:
    """Copy changed UNet tensors into `pipeline.unet` in place (dtype and device follow the UNet)."""
    params = dict(pipeline.unet.named_parameters())
    for name, value in tensors.items():
        if name not in params:
            raise HarnessError(f"{where}: '{name}' is not a parameter of the pipeline's UNet")
        if tuple(params[name].shape) != tuple(value.shape):
            raise HarnessError(
                f"{where}: '{name}' has shape {tuple(value.shape)}, the UNet's has {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))


@torch.no_grad()
def prompt_embeddings(pipeline: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """The UNet's conditioning for `prompts`, made the way the pipeline itself makes it.

    Stable Diffusion's `encode_prompt(prompt, device, num_images_per_prompt, cfg)` returns all
    77 token states; the miniature world's `encode_prompt(prompts)` returns its one-token context.
    """
    from harness.models.zoo.pipeline import DigitsPipeline

    if isinstance(pipeline, DigitsPipeline):
        return pipeline.encode_prompt(prompts)
    embeddings, _ = pipeline.encode_prompt(prompts, pipeline.unet.device, 1, False)
    return embeddings.to(pipeline.unet.dtype)
