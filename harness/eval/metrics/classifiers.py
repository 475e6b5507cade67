"""Classifier plugins for object accuracy: a model that maps uint8 images to class names.

Built in: `resnet50` (torchvision ResNet-50 with IMAGENET1K_V2 weights from a path, or the
usual torchvision download; its own transforms; ImageNet category names) and `digits` (the
miniature world's digit classifier; weights = the world folder). Any other plugin is an import
path `package.module:factory` whose factory takes `(weights: str | None)` and returns an
`ImageClassifier`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError


class ImageClassifier(nn.Module):
    """Logits over `class_names` for uint8 images (N, C, H, W); subclasses preprocess."""

    class_names: list[str]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        """The top-1 class name of each image."""
        return [self.class_names[i] for i in self(images).argmax(dim=1).tolist()]


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
                    f"resnet50: cannot download {spec.url} ({type(error).__name__}); pass its weights file"
                ) from None
        else:
            self.model = resnet50()
            self.model.load_state_dict(_read_state_dict(Path(weights)))
        self.model.eval()
        self.transforms = spec.transforms()
        self.class_names = list(spec.meta["categories"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.transforms(_rgb(images)))


class DigitsClassifier(ImageClassifier):
    """The miniature world's digit classifier; `weights` is the world folder (built if absent)."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        from harness.models.zoo.classifier import load_classifier
        from harness.models.zoo.digits import DIGIT_NAMES

        if weights is None:
            from harness.models.zoo.world import ensure_world

            weights = str(ensure_world())
        self.model = load_classifier(weights)
        self.class_names = list(DIGIT_NAMES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float() / 255)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of uint8 images (the world's FID features)."""
        return self.model.features(images.float() / 255)


BUILTIN = {"resnet50": ResNet50Classifier, "digits": DigitsClassifier}


def load_image_classifier(name: str, weights: str | None = None) -> ImageClassifier:
    """A classifier plugin by built-in name or `package.module:factory`, in eval mode."""
    if name in BUILTIN:
        return BUILTIN[name](weights).eval()
    module_name, _, attr = name.partition(":")
    if not attr:
        raise HarnessError(f"classifier '{name}': not one of {', '.join(BUILTIN)} nor 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise HarnessError(f"classifier '{name}': cannot import ({error})") from None
    classifier = factory(weights)
    if not isinstance(classifier, ImageClassifier):
        raise HarnessError(
            f"classifier '{name}': the factory returned {type(classifier).__name__}, not an ImageClassifier"
        )
    return classifier.eval()


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from harness.models.checkpoints import load_tensor_file

    return load_tensor_file(path)
