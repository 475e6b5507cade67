"""CLIP similarity (raw cosine between a prompt and its image) and the paper's CLIP score (the
share of prompts whose similarity fell below that of a reference model's image, e.g. the
original model's: higher means stronger unlearning).

Models by name: a transformers CLIP id or folder (`openai/clip-vit-base-patch32`, the
protocol's) or `open_clip:ARCH[:TAG]` (`open_clip:ViT-B-32:openai`). Weights from a path: a
transformers folder, or an open_clip checkpoint file.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics import Metric

from harness.errors import HarnessError
from harness.models.hub import local_then_hub
from harness.settings.score import DEFAULT_CLIP


class ClipEncoder:
    """Cosine similarity of uint8 images (N, C, H, W) with their prompts, batch by batch."""

    def __init__(
        self, name: str = DEFAULT_CLIP, weights: str | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        if name.startswith("open_clip:"):
            self._load_open_clip(name.removeprefix("open_clip:"), weights)
        else:
            self._load_transformers(weights or name)

    def _load_transformers(self, source: str) -> None:
        from transformers import CLIPModel, CLIPProcessor

        def load(**kwargs: Any) -> tuple[Any, Any]:
            return CLIPModel.from_pretrained(source, **kwargs), CLIPProcessor.from_pretrained(source, **kwargs)

        model, self.processor = local_then_hub(load, source, "clip model", "--clip-weights DIR (score.clip_weights)")
        self.model = model.to(self.device).eval()
        self.backend = "transformers"

    def _load_open_clip(self, spec: str, weights: str | None) -> None:
        import open_clip

        arch, _, tag = spec.partition(":")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights or tag or None)
        except (RuntimeError, ValueError, OSError) as error:
            raise HarnessError(f"clip model 'open_clip:{spec}': cannot load ({str(error).splitlines()[0]})") from None
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.backend = "open_clip"

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Raw cosine similarity (N,) of each image with its own prompt, on the CPU."""
        pil = [_to_pil(image) for image in images]
        if self.backend == "transformers":
            inputs = self.processor(text=prompts, images=pil, return_tensors="pt", padding=True, truncation=True)
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            image_emb, text_emb = out.image_embeds, out.text_embeds
        else:
            pixels = torch.stack([self.preprocess(p) for p in pil]).to(self.device)
            image_emb = self.model.encode_image(pixels)
            text_emb = self.model.encode_text(self.tokenizer(prompts).to(self.device))
        return F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1).cpu()


class ClipScore(Metric):
    """Mean similarity, and the share of prompts below the reference model's similarity; overall
    and per label (the artists of Table 2) when the suite has labels."""

    full_state_update = False

    def __init__(self, labels: list[str] | None = None) -> None:
        super().__init__()
        self.labels = list(labels or [])
        slots = len(self.labels) + 1  # the last slot holds prompts without a label
        for name, dtype in (("similarity_sum", torch.float64), ("count", torch.long),
                            ("below", torch.long), ("compared", torch.long)):
            self.add_state(name, torch.zeros(slots, dtype=dtype), dist_reduce_fx="sum")

    def update(self, similarity: torch.Tensor, reference: torch.Tensor | None = None,
               labels: list[str | None] | None = None) -> None:
        """Add a batch of similarities, the reference images' similarities, and the prompts' labels."""
        index = {label: i for i, label in enumerate(self.labels)}
        slot = torch.tensor([index.get(label, len(self.labels)) for label in (labels or [None] * similarity.numel())],
                            device=self.count.device)
        self.similarity_sum.index_add_(0, slot, similarity.double().to(self.count.device))
        self.count.index_add_(0, slot, torch.ones_like(slot))
        if reference is not None:
            self.below.index_add_(0, slot, (similarity < reference).long().to(self.count.device))
            self.compared.index_add_(0, slot, torch.ones_like(slot))

    def compute(self) -> dict[str, Any]:
        """`clip_similarity`, with a reference `clip_score`, and their `_per_class` versions."""
        count, compared = int(self.count.sum()), int(self.compared.sum())
        result: dict[str, Any] = {"clip_similarity": float(self.similarity_sum.sum() / count) if count else None}
        if compared:
            result["clip_score"] = float(self.below.sum()) / compared
        if self.labels:
            result["clip_similarity_per_class"] = {
                label: float(self.similarity_sum[i] / self.count[i]) for i, label in enumerate(self.labels) if self.count[i]
            }
            if compared:
                result["clip_score_per_class"] = {
                    label: float(self.below[i]) / float(self.compared[i]) for i, label in enumerate(self.labels) if self.compared[i]
                }
        return result


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0]).convert("RGB") if array.shape[2] == 1 else Image.fromarray(array)
