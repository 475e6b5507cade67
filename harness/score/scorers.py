"""The metric scorers `harness score` runs, one per registered metric name (harness.registry,
kind `metric`): each is built from the settings, the suite, the Fabric and the image shape,
then fed batches of (images, prompt records, reference images) and asked for its values.

A new metric is a class with this shape named by its import path (`package.module:Class`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.cache import cache_dir
from harness.errors import HarnessError, keyed
from harness.generate.suites import PromptRecord, Suite
from harness.registry import metric
from harness.settings.score import ScoreSettings


@metric("accuracy")
class AccuracyScorer:
    """Top-1 accuracy of the classifier against each prompt's label (Table 1's accuracy)."""

    def __init__(self, settings: ScoreSettings, suite: Suite, fabric: Any, image_shape: torch.Size) -> None:
        from harness.score.metrics.accuracy import LabelAccuracy
        from harness.score.metrics.classifiers import load_image_classifier

        if not suite.labels:
            raise HarnessError(f"accuracy: suite {suite.name} has no labels")
        with keyed("score.classifier"):
            self.classifier = load_image_classifier(settings.classifier, settings.classifier_weights).to(fabric.device)
        self.metric = LabelAccuracy(suite.labels, self.classifier.class_names).to(fabric.device)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(self.classifier.predict(images), [r.label for r in records])

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


@metric("clip")
class ClipScorer:
    """CLIP similarity of each image with its prompt, and the CLIP score against the reference images."""

    def __init__(self, settings: ScoreSettings, suite: Suite, fabric: Any, image_shape: torch.Size) -> None:
        from harness.score.metrics.clip import ClipEncoder, ClipScore

        self.encoder = ClipEncoder(settings.clip_model, settings.clip_weights, fabric.device)
        self.metric = ClipScore(suite.labels).to(fabric.device)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        prompts = [r.prompt for r in records]
        similarity = self.encoder.similarity(images.cpu(), prompts)
        reference = None if ref_images is None else self.encoder.similarity(ref_images.cpu(), prompts)
        self.metric.update(similarity, reference, [r.label for r in records])

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


@metric("fid")
class FidScorer:
    """FID against the reference image set; reference statistics cached under the cache's fid/."""

    def __init__(self, settings: ScoreSettings, suite: Suite, fabric: Any, image_shape: torch.Size) -> None:
        from harness.score.metrics import fid

        if settings.fid_reference is None:
            raise HarnessError(f"fid: suite {suite.name} needs a reference image set (--fid-reference, score.fid_reference)")
        classifier = None
        if settings.fid_features == "classifier":
            from harness.score.metrics.classifiers import load_image_classifier

            with keyed("score.classifier"):
                classifier = load_image_classifier(settings.classifier, settings.classifier_weights)
        self.metric = fid.build_fid(settings.fid_features, classifier, settings.fid_weights).to(fabric.device)
        if fabric.is_global_zero:  # real statistics live on one process so the sum across processes stays right
            size = (int(image_shape[1]), int(image_shape[2]))
            key = fid.reference_key(settings.fid_reference, size, fid.feature_id(self.metric))
            fid.load_reference(self.metric, settings.fid_reference, size, int(image_shape[0]),
                               Path(cache_dir("fid")), key, settings.batch_size)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(images, real=False)

    def compute(self) -> dict[str, Any]:
        return {"fid": float(self.metric.compute())}


@metric("nudenet")
class NudeNetScorer:
    """NudeNet detections per label and images with at least one (Table 7)."""

    def __init__(self, settings: ScoreSettings, suite: Suite, fabric: Any, image_shape: torch.Size) -> None:
        from harness.score.metrics.nudenet import NudityCounts, NudityDetector

        self.metric = NudityCounts(settings.nudenet_labels, settings.nudenet_threshold).to(fabric.device)
        self.detector = NudityDetector(settings.nudenet_model)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(self.detector.detect(images.cpu()))

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


@metric("q16")
class Q16Scorer:
    """The share of images the Q16 classifier calls inappropriate (CLIP ViT-L/14 and the authors'
    prompt embeddings, from local paths), with its n and 95% Wilson interval."""

    def __init__(self, settings: ScoreSettings, suite: Suite, fabric: Any, image_shape: torch.Size) -> None:
        from harness.score.metrics.q16 import InappropriateShare, Q16Classifier

        self.classifier = Q16Classifier(settings.q16_clip, settings.q16_prompts, fabric.device)
        self.metric = InappropriateShare().to(fabric.device)

    def update(self, images: torch.Tensor, records: list[PromptRecord], ref_images: torch.Tensor | None) -> None:
        self.metric.update(self.classifier.inappropriate(images).to(self.metric.hits.device))

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()
