"""How well the world's generator draws what it is asked: the classifier's verdict per digit.

Image `i` of digit `d` starts from the noise of seed `1000 * d + i`, so a measurement is the same
on every run on one machine, whatever the batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.worlds.digits.data import concept_prompts
from harness.worlds.digits.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, DigitsPipeline


def image_seed(digit: int, index: int) -> int:
    """The seed of image `index` of `digit`'s prompt."""
    return 1000 * digit + index


@torch.no_grad()
def generation_accuracy(
    pipeline: DigitsPipeline,
    classifier: nn.Module,
    per_digit: int = 100,
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 250,
    prompt_index: int = 0,
) -> dict:
    """Per-digit and mean fraction of generated images the classifier assigns to the prompted digit.

    The prompt is `concept_prompts(d)[prompt_index]` ("a photo of the digit seven" by default).
    """
    jobs = [(d, i) for d in range(10) for i in range(per_digit)]
    predictions: list[torch.Tensor] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        images = pipeline(
            [concept_prompts(d)[prompt_index] for d, _ in chunk],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(image_seed(d, i)) for d, i in chunk],
            output_type="pt",
        ).images
        predictions.append(classifier(images.cpu()).argmax(1))
    predicted = torch.cat(predictions).view(10, per_digit)
    hits = (predicted == torch.arange(10).unsqueeze(1)).float().mean(1)
    return {
        "mean": float(hits.mean()),
        "min": float(hits.min()),
        "per_digit": {str(d): float(hits[d]) for d in range(10)},
        "per_digit_images": per_digit,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
    }
