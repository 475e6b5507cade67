"""Q16 on a tiny random CLIP vision model with prompt embeddings the test chooses."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.generate.suites import load_suite
from harness.registry import resolve
from harness.score.metrics.q16 import InappropriateShare, Q16Classifier, load_prompt_embeddings
from harness.settings.score import ScoreSettings


@pytest.fixture(scope="module")
def vision_clip(tmp_path_factory) -> Path:
    """A tiny randomly initialised CLIPVisionModelWithProjection with its processor, as a folder."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("q16-clip")
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=8)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images(seed: int, count: int) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _embeddings(folder: Path, images: torch.Tensor) -> torch.Tensor:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model, processor = CLIPVisionModelWithProjection.from_pretrained(folder), CLIPImageProcessor.from_pretrained(folder)
    from PIL import Image

    pixels = processor(images=[Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images], return_tensors="pt")
    with torch.no_grad():
        return model(**pixels).image_embeds


def _prompts_pointing_at(folder: Path, inappropriate: torch.Tensor, appropriate: torch.Tensor) -> np.ndarray:
    """Row 0 the mean embedding of `appropriate`, row 1 of `inappropriate`."""
    rows = [F.normalize(_embeddings(folder, x), dim=-1).mean(0) for x in (appropriate, inappropriate)]
    return torch.stack(rows).numpy().astype(np.float32)


def test_q16_calls_the_images_near_the_inappropriate_prompt(vision_clip: Path, tmp_path: Path) -> None:
    bad, good = _images(1, 4), _images(2, 4)
    prompts = _prompts_pointing_at(vision_clip, bad, good)
    authors = tmp_path / "prompts.p"  # the authors' form: a pickled numpy array
    authors.write_bytes(pickle.dumps(prompts))
    classifier = Q16Classifier(str(vision_clip), str(authors))
    expected = (100 * F.normalize(_embeddings(vision_clip, torch.cat([bad, good])), dim=-1)
                @ F.normalize(torch.from_numpy(prompts), dim=-1).T).softmax(-1).argmax(-1).eq(1)
    got = classifier.inappropriate(torch.cat([bad, good]))
    assert torch.equal(got, expected) and 0 < int(got.sum()) < 8  # both verdicts occur
    np.save(tmp_path / "prompts.npy", prompts)
    assert torch.equal(load_prompt_embeddings(tmp_path / "prompts.npy"), load_prompt_embeddings(authors))

    scorer = resolve("metric", "q16")(ScoreSettings(q16_clip=str(vision_clip), q16_prompts=str(authors)),
                                      load_suite("digits-all-1"), SimpleNamespace(device=torch.device("cpu")),
                                      torch.Size((3, 32, 32)))
    scorer.update(torch.cat([bad, good]), [], None)
    q16 = scorer.compute()["q16"]
    assert q16["images"] == int(expected.sum()) and q16["n"] == 8 and q16["rate"] == int(expected.sum()) / 8
    assert q16["ci"][0] < q16["rate"] < q16["ci"][1] and "argmax" in q16["rule"]


def test_a_pickle_holding_anything_but_numpy_arrays_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "pwned"),)

    path = tmp_path / "prompts.p"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(HarnessError, match=r"q16: .*prompts.p: not a prompt embedding array \(refusing posix.system"):
        load_prompt_embeddings(path)
    assert not (tmp_path / "pwned").exists()


def test_bad_q16_inputs_name_the_setting(vision_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"give --q16-prompts FILE \(score.q16_prompts\)"):
        Q16Classifier(str(vision_clip), None)
    with pytest.raises(HarnessError, match=r"prompt embeddings file .*missing.p not found \(score.q16_prompts"):
        load_prompt_embeddings(tmp_path / "missing.p")
    np.save(tmp_path / "three.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(HarnessError, match=r"expected 2 prompt embeddings \(2, D\), got shape \(3, 8\)"):
        load_prompt_embeddings(tmp_path / "three.npy")
    np.save(tmp_path / "wide.npy", np.zeros((2, 768), np.float32))
    with pytest.raises(HarnessError, match=r"width 768 do not match the CLIP model's projection \(8"):
        Q16Classifier(str(vision_clip), str(tmp_path / "wide.npy"))


def test_share_sums_over_batches() -> None:
    share = InappropriateShare()
    share.update(torch.tensor([True, False]))
    share.update(torch.tensor([True, True, False]))
    assert share.compute()["q16"]["images"] == 3 and share.compute()["q16"]["n"] == 5
