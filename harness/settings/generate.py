"""The generate stage's settings: how every image is sampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, MultipleOf

from harness.config import check_bounds


@dataclass
class GenerationSettings:
    """How every image is sampled; unlearning methods that sample use the same settings."""

    steps: Annotated[int, Ge(1)] = 50
    """sampling steps"""
    guidance: Annotated[float, Ge(0)] = 7.5
    """classifier-free guidance scale"""
    height: Annotated[int, Ge(8), MultipleOf(8)] | None = None
    """image height in pixels (none: the model's own)"""
    width: Annotated[int, Ge(8), MultipleOf(8)] | None = None
    """image width in pixels (none: the model's own)"""
    seed_policy: Literal["row", "fixed"] = "row"
    """row: each prompt's own seed; fixed: fixed_seed for every prompt"""
    fixed_seed: Annotated[int, Ge(0)] = 0
    """the seed of every prompt under seed_policy fixed"""
    batch_size: Annotated[int, Ge(1)] = 8
    """prompts per pipeline call"""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on GPUs (the protocol's), float32 elsewhere"""
    shard_size: Annotated[int, Ge(1)] = 100
    """prompts per WebDataset shard (shard i is one SLURM array task)"""
    scheduler: str | None = "PNDMScheduler"
    """diffusers scheduler class (none: the model's own)"""
    guidance_policy: Literal["fixed", "row"] = "fixed"
    """fixed: `guidance` for every prompt; row: a suite row's own guidance where it has one."""

    def __post_init__(self) -> None:
        check_bounds(self)

    def pipeline_kwargs(self, prompts: list[str], seeds: list[int], guidance: float | None = None,
                        generator_device: str = "cpu") -> dict[str, Any]:
        """Keyword arguments of a pipeline call with these settings: prompt i starts from a
        generator seeded `seeds[i]`, on the CPU so that an image depends neither on its batch nor on
        the device (another `generator_device` draws as code that seeds that device does);
        images come back as `pt` tensors."""
        import torch

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance if guidance is None else guidance,
            "generator": [torch.Generator(generator_device).manual_seed(seed) for seed in seeds],
            "output_type": "pt",
        }
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        return kwargs
