"""A hub id that cannot be found says which known mirror to try (no network: the loaders are monkeypatched)."""

from __future__ import annotations

import huggingface_hub
import pytest
from diffusers import DiffusionPipeline

import harness.models.hub as hub
import harness.models.pipelines as pipelines
from harness.errors import HarnessError
from harness.models.checkpoints import resolve_local
from harness.models.hub import mirror_hint

MOVED = "runwayml/stable-diffusion-v1-5"
MIRROR = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_mirror_hint_names_the_mirror_and_the_other_baseline() -> None:
    hint = mirror_hint(MOVED)
    assert MIRROR in hint and "CompVis/stable-diffusion-v1-4" in hint
    assert mirror_hint("RunwayML/Stable-Diffusion-v1-5") == mirror_hint(MOVED).replace(MOVED, "RunwayML/Stable-Diffusion-v1-5")
    assert mirror_hint(MIRROR) == "" and mirror_hint("someone/some-model") == ""


def _no_pipeline(*args, **kwargs):
    raise OSError(f"{args[0]} is not a local folder and is not a valid model identifier\nmore lines")


@pytest.mark.parametrize("reachable", [False, True], ids=["offline", "not-found"])
def test_pipeline_of_a_moved_id_names_its_mirror(monkeypatch: pytest.MonkeyPatch, reachable: bool) -> None:
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", _no_pipeline)
    monkeypatch.setattr(pipelines, "hub_reachable", lambda: reachable)
    with pytest.raises(HarnessError) as caught:
        pipelines.load_pipeline(MOVED)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{'pipeline ' if not reachable else ''}{MOVED}")
    assert f"try its mirror {MIRROR}" in message and "CompVis/stable-diffusion-v1-4" in message
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", _no_pipeline)
    with pytest.raises(HarnessError) as caught:
        pipelines.load_pipeline("someone/unknown-model")
    assert "mirror" not in str(caught.value)


@pytest.mark.parametrize("reachable", [False, True], ids=["offline", "not-found"])
def test_unet_weights_of_a_moved_id_name_its_mirror(monkeypatch: pytest.MonkeyPatch, reachable: bool) -> None:
    def no_snapshot(*args, **kwargs):
        raise huggingface_hub.errors.RepositoryNotFoundError("404 Client Error")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_snapshot)
    monkeypatch.setattr(hub, "hub_reachable", lambda: reachable)
    with pytest.raises(HarnessError) as caught:
        resolve_local(MOVED)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(MOVED)
    assert f"try its mirror {MIRROR}" in message
