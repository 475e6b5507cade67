"""The filter that keeps the erased concept out of a method's own samples (DiMUM's alternatives):
which classifier `auto` means, pixel samples to images, what is dropped and when nothing is left."""

from __future__ import annotations

import pytest
import torch

import harness.score.metrics.classifiers as classifiers
from harness.errors import HarnessError
from harness.score.metrics.classifiers import concept_classifier
from harness.train.concept_filter import drop_concept_samples, sample_images


class BrightIsSeven(torch.nn.Module):
    """A stand-in digit classifier: a bright image is a seven, a dark one a one."""

    class_names = ["one", "seven"]

    def predict(self, images: torch.Tensor) -> list[str]:
        return ["seven" if image.float().mean() > 127 else "one" for image in images]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifiers, "load_image_classifier", lambda name, weights: BrightIsSeven())


def test_auto_is_the_worlds_classifier_resnet_for_objects_and_none_otherwise() -> None:
    assert concept_classifier("auto", "zoo:digits", "digit") == "digits"
    assert concept_classifier("auto", "stable-diffusion-v1-5/stable-diffusion-v1-5", "object") == "resnet50"
    assert concept_classifier("auto", "/models/sd", "artist") is None
    assert concept_classifier("none", "zoo:digits", "digit") is None
    assert concept_classifier("pkg.mod:make", "zoo:digits", "digit") == "pkg.mod:make"


def test_pixel_samples_map_from_minus_one_one_to_uint8() -> None:
    images = sample_images(object(), torch.tensor([[[[-1.0, 0.0, 1.0, 3.0]]]]))
    assert images.dtype == torch.uint8 and images.flatten().tolist() == [0, 128, 255, 255]


def test_samples_named_as_the_concept_are_dropped_and_counted(stand_in: None) -> None:
    samples = torch.stack([torch.full((1, 4, 4), v) for v in (-0.9, 0.8, -0.5, 0.9, -0.1)])
    outcome = drop_concept_samples(object(), samples, ["seven"], "digits", None)
    assert outcome.info == {"classifier": "digits", "dropped": 2, "kept": 3} and outcome.kept_index == [0, 2, 4]
    assert torch.equal(outcome.kept, samples[[0, 2, 4]])


def test_no_filter_keeps_everything() -> None:
    samples = torch.ones(3, 1, 4, 4)
    outcome = drop_concept_samples(object(), samples, ["seven"], None, None)
    assert outcome.kept is samples and outcome.info == {"classifier": None, "dropped": 0, "kept": 3}


def test_nothing_left_or_an_unknown_class_is_a_keyed_error(stand_in: None) -> None:
    with pytest.raises(HarnessError, match="every one of the 2 samples is a seven to digits; nothing is left"):
        drop_concept_samples(object(), torch.ones(2, 1, 4, 4), ["seven"], "digits", None)
    with pytest.raises(HarnessError, match="classifier digits has no class 'golf ball'"):
        drop_concept_samples(object(), torch.ones(2, 1, 4, 4), ["golf ball"], "digits", None)
