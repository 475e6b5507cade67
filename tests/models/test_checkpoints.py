"""Loading UNet weights from every kind of source, safely, and applying changed tensors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from harness.atomic import atomic_path
from harness.errors import HarnessError
from harness.models.checkpoints import is_hub_id, load_state_dict, save_tensors
from harness.models.layers import select_layers
from harness.models.pipelines import apply_tensors


class Payload:
    """An arbitrary object that a weights-only load must refuse to rebuild."""

    def __reduce__(self):  # noqa: D105
        return (print, ("unpickled!",))


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory: pytest.TempPathFactory, tiny_sd_unet) -> Path:
    folder = tmp_path_factory.mktemp("pipe")
    tiny_sd_unet(seed=3).save_pretrained(folder / "unet")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def test_every_source_kind_gives_the_same_tensors(unet_folder: Path, tmp_path: Path) -> None:
    from_pipeline = load_state_dict(unet_folder)
    from_unet = load_state_dict(unet_folder / "unet")
    save_tensors(from_pipeline, tmp_path / "w.safetensors")
    torch.save({k: v.half() for k, v in from_pipeline.items()}, tmp_path / "w.pt")
    torch.save({"state_dict": from_pipeline}, tmp_path / "wrapped.ckpt")
    from_safetensors = load_state_dict(tmp_path / "w.safetensors")
    from_pt = load_state_dict(tmp_path / "w.pt")
    wrapped = load_state_dict(tmp_path / "wrapped.ckpt")
    name = "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2.weight"
    assert from_pipeline[name].equal(from_unet[name]) and from_pipeline[name].equal(from_safetensors[name])
    assert from_pt[name].dtype == torch.float16 and torch.allclose(from_pt[name].float(), from_pipeline[name], atol=1e-3)
    assert wrapped[name].equal(from_pipeline[name])
    assert not list(tmp_path.glob(".*.tmp"))


def test_unsafe_or_unknown_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(HarnessError, match="evil.pt: not a weights-only state dict"):
        load_state_dict(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(HarnessError, match="unknown checkpoint type '.npz'"):
        load_state_dict(tmp_path / "w.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"not really")
    with pytest.raises(HarnessError, match="broken.safetensors: not a readable safetensors file"):
        load_state_dict(tmp_path / "broken.safetensors")
    with pytest.raises(HarnessError, match="no UNet weights found"):
        load_state_dict(tmp_path)


def test_hub_ids_are_told_from_paths(tmp_path: Path) -> None:
    assert is_hub_id("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert not is_hub_id("zoo:digits") and not is_hub_id("./a/b") and not is_hub_id("a/b/c")
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert not is_hub_id(str(tmp_path / "owner" / "name"))


def test_select_layers_keeps_model_order_and_names_unmatched_patterns() -> None:
    names = ["a.ff.net.2.weight", "b.attn2.to_k.weight", "c.ff.net.2.weight"]
    assert select_layers(names, ["c.*", "*ff.net.2.weight"]) == ["a.ff.net.2.weight", "c.ff.net.2.weight"]
    with pytest.raises(HarnessError, match="layer pattern '\\*to_q\\*' matches no parameter"):
        select_layers(names, ["*ff*", "*to_q*"])


def test_apply_tensors_copies_and_checks_names_and_shapes(tiny_sd_unet) -> None:
    class Holder:
        unet = tiny_sd_unet(seed=0)

    name = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"
    shape = dict(Holder.unet.named_parameters())[name].shape
    apply_tensors(Holder, {name: torch.full(shape, 0.5, dtype=torch.float16)})
    assert (dict(Holder.unet.named_parameters())[name] == 0.5).all()
    with pytest.raises(HarnessError, match="'nope' is not a parameter"):
        apply_tensors(Holder, {"nope": torch.zeros(1)})
    with pytest.raises(HarnessError, match="has shape \\(2, 2\\)"):
        apply_tensors(Holder, {name: torch.zeros(2, 2)})


def test_atomic_writes_leave_nothing_half_written_and_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out" / "weights.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []
    save_tensors({"w": torch.ones(2)}, target)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["weights.safetensors"]
