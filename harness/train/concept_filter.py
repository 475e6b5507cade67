"""Keep the erased concept out of a method's own samples: the frozen model's images of a neutral
prompt ("a photo of a digit") include the concept about as often as the concept is among its
kind (a tenth of a digit world's), so a method that trains on them (DiMUM's alternatives) would
partly learn to draw what it should forget. A classifier names each sample; those it names as an
erased concept are dropped, and the count is recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError


@dataclass
class FilterOutcome:
    """The samples kept and what the filter did (a JSON-ready record)."""

    kept: torch.Tensor
    info: dict[str, Any]
    kept_index: list[int]


def sample_images(pipeline: Any, samples: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) of samples in the UNet's input space (latents decode through the
    pipeline's VAE; pixel samples are in [-1, 1])."""
    vae = getattr(pipeline, "vae", None)
    if vae is not None:
        with torch.no_grad():
            decoded = [vae.decode(chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample.float().cpu()
                       for chunk in samples.split(8)]
        samples = torch.cat(decoded)
    return ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def drop_concept_samples(pipeline: Any, samples: torch.Tensor, concepts: list[str], classifier: str | None,
                         weights: str | None) -> FilterOutcome:
    """`samples` without those the classifier names as one of `concepts` (errors are keyed: the
    caller names the filter's key)."""
    if classifier is None:
        return FilterOutcome(samples, {"classifier": None, "dropped": 0, "kept": len(samples)}, list(range(len(samples))))
    from harness.score.metrics.classifiers import load_image_classifier

    model = load_image_classifier(classifier, weights)
    erased = {c.lower() for c in concepts}
    unknown = erased - {name.lower() for name in model.class_names}
    if unknown:
        raise HarnessError(f"classifier {classifier} has no class '{sorted(unknown)[0]}' to filter out", key="")
    images = sample_images(pipeline, samples)
    names = [name for chunk in images.split(64) for name in model.predict(chunk)]
    keep = [i for i, name in enumerate(names) if name.lower() not in erased]
    if not keep:
        raise HarnessError(f"every one of the {len(samples)} samples is a {'/'.join(concepts)} to {classifier}; "
                           "nothing is left to train on", key="")
    return FilterOutcome(samples[keep], {"classifier": classifier, "dropped": len(samples) - len(keep),
                                         "kept": len(keep)}, keep)
