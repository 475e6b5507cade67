"""The world's classifier as a scoring plugin (registered as classifier `digits`): uint8 images
in, digit names out, and penultimate features for FID."""

from __future__ import annotations

import torch

from harness.registry import classifier
from harness.score.metrics.classifiers import ImageClassifier
from harness.worlds.digits.classifier import load_classifier
from harness.worlds.digits.data import DIGIT_NAMES
from harness.worlds.digits.store import ensure_world


@classifier("digits")
class DigitsImageClassifier(ImageClassifier):
    """The world's classifier as a scoring plugin (registered as classifier `digits`): uint8
    images in, digit names out; `weights` is a world folder (default: the installed world)."""

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        if weights is None:
            weights = str(ensure_world())
        self.model = load_classifier(weights)
        self.class_names = list(DIGIT_NAMES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.float() / 255)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features of uint8 images (the world's FID features)."""
        return self.model.features(images.float() / 255)
