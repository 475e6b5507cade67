"""The world's judge: a small CNN trained on the real digits, playing ResNet-50's part.

It takes images (N, 1, H, W) or (N, 3, H, W) in [0, 1] of any size (resized to its own), returns
logits (N, 10), and `.features(x)` gives the 128-d penultimate features used for FID.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.models.checkpoints import load_tensor_file, save_tensors
from harness.progress import bar
from harness.provenance import write_json_atomic
from harness.worlds.digits.data import heldout_digits, train_digits

log = logging.getLogger(__name__)

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"


class DigitClassifier(nn.Module):
    """Two conv stages (32, 64 channels) and a 128-d feature layer over `size` x `size` grey images."""

    def __init__(self, size: int = 16, width: int = 32, features: int = 128) -> None:
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (size // 4) ** 2, features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(features, 10)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise HarnessError(f"classifier input: expected (N, 1|3, H, W), got {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 128) of images in [0, 1]."""
        return self.body(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of images in [0, 1]."""
        return self.head(self.dropout(self.features(x)))


def _shift(x: torch.Tensor, generator: torch.Generator, pixels: int) -> torch.Tensor:
    """Random translations by up to `pixels` in each direction (zero fill), one per image."""
    padded = F.pad(x, (pixels,) * 4)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * pixels + 1, (len(x), 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of `model` on images in [0, 1]."""
    model.eval()
    predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(512)])
    return float((predictions == labels).float().mean())


def train_classifier(size: int = 16, epochs: int = 30, seed: int = 0) -> tuple[DigitClassifier, dict]:
    """Train on the training split with small random shifts; report held-out top-1."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = train_digits(size)
    model = DigitClassifier(size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = (len(images) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    for _ in bar(range(epochs), desc="classifier", unit="epoch"):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(64):
            x = _shift(images[batch], generator, max(1, size // 8))
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    test_images, test_labels = heldout_digits(size)
    report = {
        "size": size,
        "epochs": epochs,
        "seed": seed,
        "train_accuracy": accuracy(model, images, labels),
        "heldout_accuracy": accuracy(model, test_images, test_labels),
        "heldout_count": len(test_labels),
    }
    log.info("classifier: held-out top-1 %.4f on %d real digits", report["heldout_accuracy"], len(test_labels))
    return model.eval(), report


def save_classifier(model: DigitClassifier, report: dict, world_dir: str | Path) -> None:
    """Write `classifier.safetensors` and `classifier.json` (its size and training report)."""
    world_dir = Path(world_dir)
    save_tensors(model.state_dict(), world_dir / WEIGHTS_FILE)
    write_json_atomic(world_dir / CONFIG_FILE, report)


def load_classifier(world_dir: str | Path) -> DigitClassifier:
    """The world's classifier in eval mode, on the CPU."""
    world_dir = Path(world_dir)
    config_path = world_dir / CONFIG_FILE
    if not world_dir.is_dir():
        raise HarnessError(f"{world_dir}: no such world folder (the digits classifier's weights are a world's folder)")
    if not config_path.is_file():
        raise HarnessError(f"{config_path}: no such file (build the world with `harness zoo build digits`)")
    config = json.loads(config_path.read_text())
    model = DigitClassifier(int(config["size"]))
    model.load_state_dict(load_tensor_file(world_dir / WEIGHTS_FILE))
    return model.eval()
