"""Top-1 object accuracy: the share of images a classifier names as their prompt's class."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from harness.errors import HarnessError


class LabelAccuracy(Metric):
    """Per-class counts of correct top-1 predictions, matched by lower-cased class name."""

    full_state_update = False

    def __init__(self, labels: list[str], classifier_classes: list[str]) -> None:
        super().__init__()
        known = {name.lower() for name in classifier_classes}
        unknown = [label for label in labels if label.lower() not in known]
        if unknown:
            raise HarnessError(f"accuracy: label '{unknown[0]}' is not a class of the classifier")
        self.labels = list(labels)
        self.index = {label.lower(): i for i, label in enumerate(labels)}
        self.add_state("correct", torch.zeros(len(labels), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(labels), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: list[str], targets: list[str]) -> None:
        """Add a batch of predicted class names and their prompts' labels."""
        for name, target in zip(predicted, targets):
            i = self.index[target.lower()]
            self.total[i] += 1
            self.correct[i] += int(name.lower() == target.lower())

    def compute(self) -> dict[str, object]:
        """`accuracy` over all images, `accuracy_per_class` {label: accuracy} and
        `accuracy_counts_per_class` {label: [correct, images]} (the n behind each share)."""
        total = int(self.total.sum())
        pairs = [(label, c, t) for label, c, t in zip(self.labels, self.correct.tolist(), self.total.tolist()) if t]
        return {
            "accuracy": float(self.correct.sum()) / total if total else None,
            "accuracy_per_class": {label: float(c) / float(t) for label, c, t in pairs},
            "accuracy_counts_per_class": {label: [int(c), int(t)] for label, c, t in pairs},
        }
