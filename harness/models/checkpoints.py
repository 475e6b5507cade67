"""Reading UNet weights from wherever a user keeps them, and writing tensors to safetensors.

A source is a hub id (`stable-diffusion-v1-5/stable-diffusion-v1-5`), `zoo:NAME`, a diffusers pipeline or UNet
folder, a `.safetensors` file, or a `.pt`/`.bin`/`.ckpt` state dict such as ConceptPrune's fp16
full-UNet dump. Pickled files load with `weights_only=True`: plain tensors only.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.atomic import atomic_path
from harness.errors import HarnessError

log = logging.getLogger(__name__)

UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The UNet's tensors, keyed by the UNet's own parameter names, on the CPU."""
    path = resolve_local(str(source))
    if path.is_dir():
        return _load_unet_folder(path)
    return load_tensor_file(path)


def resolve_local(source: str) -> Path:
    """A local path for `source`: the path itself, the zoo's folder, or a hub snapshot."""
    from harness.world import world_of_source

    world = world_of_source(source)
    if world is not None:
        return world.pipeline_dir()
    path = Path(source).expanduser()
    if path.exists():
        return path
    if is_hub_id(source):
        return _hub_snapshot(source)
    raise HarnessError(f"{source}: no such file or folder")


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from one `.safetensors` file or one weights-only pickle state dict."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as error:
            raise HarnessError(f"{path}: not a readable safetensors file ({error})") from None
    if path.suffix in PICKLE_SUFFIXES:
        return _load_weights_only(path)
    raise HarnessError(f"{path}: unknown checkpoint type '{path.suffix}' (use .safetensors, .pt, .bin or .ckpt)")


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write tensors atomically: to a temporary name beside `path`, renamed when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
    return path


def _load_unet_folder(folder: Path) -> dict[str, torch.Tensor]:
    unet = folder / "unet" if (folder / "model_index.json").is_file() else folder
    for name in UNET_WEIGHT_FILES:
        if (unet / name).is_file():
            log.debug("loading UNet weights from %s", unet / name)
            return load_tensor_file(unet / name)
    raise HarnessError(f"{folder}: no UNet weights found (looked for {', '.join(UNET_WEIGHT_FILES)} in {unet})")


def _load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or unsafe pickles
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HarnessError(f"{path}: not a weights-only state dict ({first_line})") from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HarnessError(f"{path}: expected a mapping of parameter names to tensors")
    return data


HEAD_BYTES = 4 << 20
"""Large weight files are identified by size plus the digest of their first and last 4 MiB."""


def source_identity(source: str) -> str:
    """A content identity of a model source, cheap enough for every stage to compute: a world's
    own identity, a hub id as given, or a digest of a local file or folder (file names, sizes,
    small files whole, the head and tail of large ones)."""
    from harness.world import world_of_source

    world = world_of_source(source)
    if world is not None:
        return world.identity()
    path = Path(source).expanduser()
    if not path.exists():
        return f"hub:{source}"
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{size}".encode())
        with open(file, "rb") as handle:
            if size <= 2 * HEAD_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(HEAD_BYTES))
                handle.seek(-HEAD_BYTES, 2)
                digest.update(handle.read(HEAD_BYTES))
    return f"local:{digest.hexdigest()[:20]}"


def is_hub_id(source: str) -> bool:
    """`owner/name` that is not a local path."""
    from harness.world import ZOO_PREFIX

    if source.startswith(ZOO_PREFIX) or Path(source).expanduser().exists():
        return False
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _hub_snapshot(repo_id: str) -> Path:
    """The UNet files of a hub model: from the local hub cache, else downloaded when the hub answers."""
    from huggingface_hub import snapshot_download

    from harness.models.hub import hub_reachable, mirror_hint, unreachable_message

    patterns = ["model_index.json", "unet/*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not in the cache: the hub client raises several types
        pass
    if not hub_reachable():
        raise HarnessError(unreachable_message(repo_id, "a local path (a diffusers folder, .safetensors or .pt file)",
                                               repo_id))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # network, auth and missing-repo errors all end here
        raise HarnessError(f"{repo_id}: not a local path and the hub download failed ({type(error).__name__})"
                           f"{mirror_hint(repo_id)}") from None
