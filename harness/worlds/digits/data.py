"""The miniature world's data: scikit-learn's real handwritten digits, its prompts and its split.

The 1797 8x8 images (grey levels 0-16) are scaled to [0, 1] and upsampled bilinearly to the
world's size. One fixed, stratified split holds out 20% of them for measuring the classifier;
both models train on the rest only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CONCEPT_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {name}",
    "a handwritten {name}",
    "an image of the number {name}",
    "a picture of a handwritten {name}",
    "the digit {numeral}",
)
"""Paraphrases of one digit prompt; `{name}` is the word, `{numeral}` the figure."""

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "a photo of a digit",
    "a handwritten digit",
    "an image of a number",
    "a picture of a handwritten digit",
)
"""Prompts naming no digit: ConceptPrune's base side; the world draws any digit for them."""

HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


def concept_prompts(digit: int) -> list[str]:
    """The prompts for one digit, "a photo of the digit seven" first."""
    if not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise HarnessError(f"digit: expected 0-9, got {digit!r}")
    return [t.format(name=DIGIT_NAMES[digit], numeral=digit) for t in CONCEPT_TEMPLATES]


def digit_of_name(name: str) -> int:
    """The digit a name denotes: "seven", "7" or "digit seven" -> 7."""
    words = str(name).strip().lower().split()
    for word in reversed(words):
        if word in DIGIT_NAMES:
            return DIGIT_NAMES.index(word)
        if len(word) == 1 and word.isdigit():
            return int(word)
    raise HarnessError(f"digit name: '{name}' names no digit (expected one of {', '.join(DIGIT_NAMES)} or 0-9)")


def vocabulary() -> list[str]:
    """Every word of the world's prompts, sorted: the text encoder's vocabulary."""
    prompts = list(NEUTRAL_PROMPTS) + [p for d in range(10) for p in concept_prompts(d)]
    return sorted({word for prompt in prompts for word in prompt.split()})


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


@lru_cache(maxsize=1)
def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _raw_digits()
    index = np.arange(len(labels))
    train, heldout = train_test_split(
        index, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return np.sort(train), np.sort(heldout)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, h, w) images in [0, 1] resized bilinearly to (N, 1, size, size), still in [0, 1]."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _subset(which: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size < 8:
        raise HarnessError(f"image size: expected at least 8, got {size}")
    images, labels = _raw_digits()
    index = _split_indices()[which]
    x = torch.from_numpy(images[index]).unsqueeze(1)
    return upsample(x, size), torch.from_numpy(labels[index])


def train_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split: images (N, 1, size, size) in [0, 1] and labels (N,)."""
    return _subset(0, size)


def heldout_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split (20%, stratified, fixed): images (N, 1, size, size) in [0, 1], labels."""
    return _subset(1, size)
