"""Classifier plugins for object accuracy: a model that maps uint8 images to class names.

Declared (`harness.registry.classifier`): `resnet50` (torchvision ResNet-50 with
IMAGENET1K_V2 weights from a path, or the usual torchvision download; its own transforms;
ImageNet category names) and the worlds' classifiers. Any other plugin is an import path
`package.module:factory` whose factory takes `(weights: str | None)` and returns an
`ImageClassifier`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.checkpoints import load_tensor_file
from harness.registry import classifier, resolve


class ImageClassifier(nn.Module):
    """Logits over `class_names` for uint8 images (N, C, H, W); subclasses preprocess."""

    class_names: list[str]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        """The top-1 class name of each image."""
        return [self.class_names[i] for i in self(images).argmax(dim=1).tolist()]


@classifier("resnet50")
class ResNet50Classifier(ImageClassifier):
    """torchvision ResNet-50 with the IMAGENET1K_V2 transforms and category names."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        spec = ResNet50_Weights.IMAGENET1K_V2
        if weights is None:
            try:
                self.model = resnet50(weights=spec)
            except Exception as error:  # no network, proxy, corrupt cache
                raise HarnessError(
                    f"resnet50: cannot download {spec.url} ({type(error).__name__}); give local weights "
                    "with --classifier-weights (score.classifier_weights in a recipe)"
                ) from None
        else:
            self.model = resnet50()
            self.model.load_state_dict(load_tensor_file(Path(weights)))
        self.model.eval()
        self.transforms = spec.transforms()
        self.class_names = list(spec.meta["categories"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transforms(_rgb(images)))


def concept_classifier(choice: str, model: str, kind: str) -> str | None:
    """The classifier that judges whether an image shows a concept of `kind` made by `model`:
    `choice` itself, or for `auto` the base world's own classifier, ResNet-50 for an object on any
    other model, and None for other kinds (no classifier knows them); `none` is None."""
    from harness.world import world_of_source

    if choice == "none":
        return None
    if choice != "auto":
        return choice
    world = world_of_source(model)
    if world is not None:
        return world.name
    return "resnet50" if kind == "object" else None


def load_image_classifier(name: str, weights: str | None = None) -> ImageClassifier:
    """A declared classifier by registered name or `package.module:factory`, in eval mode (errors
    are keyed: callers name the key, e.g. `score.classifier`)."""
    made = resolve("classifier", name).target(weights)
    if not isinstance(made, ImageClassifier):
        raise HarnessError(f"'{name}' made a {type(made).__name__}, not an ImageClassifier", key="")
    return made.eval()


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
