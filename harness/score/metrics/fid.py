"""FID with torchmetrics' FrechetInceptionDistance against a reference image set.

Features: torchmetrics' InceptionV3 (2048-d; torch-fidelity's FeatureExtractorInceptionV3, a
dependency) for real models, its weights from a local file (`score.fid_weights`, `--fid-weights`:
torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`), else torch's hub cache, else a
download, tried only when the download's host answers (one line naming the setting otherwise);
in the miniature world the digit classifier's penultimate features.
References: a world's named set (the miniature world's `digits-heldout`: its real held-out
digits at the generated size), a folder of images, or a folder of image shards. Folder images are centre-cropped to a square and resized
to the generated images' size. Reference statistics (feature sum, outer-product sum, count) are
cached as safetensors under a hash of the source (file names, sizes and times; the feature
extractor; the size), so a second score against the same reference reads them back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from harness.errors import HarnessError
from harness.generate import shards
from harness.layout import GenerationFiles
from harness.models.hub import url_reachable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
"""torch-fidelity's FID Inception-v3 weights (converted from TensorFlow's 2015-12-05 graph), which
torchmetrics' FrechetInceptionDistance loads when no file is given."""
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's file of the same weights: the same tensor names and shapes (torchvision's
Inception3 layout with 1008 classes), so it serves as `score.fid_weights` too."""
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class ClassifierFeatures(nn.Module):
    """A classifier's `.features` as a torchmetrics feature extractor for uint8 images."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


def build_fid(
    features: str, classifier: nn.Module | None = None, weights: str | None = None
) -> FrechetInceptionDistance:
    """An FID metric that keeps its real statistics across resets.

    `features` is `inception` or `classifier` (then `classifier` must have `.features`)."""
    if features == "classifier":
        if classifier is None or not hasattr(classifier, "features"):
            raise HarnessError("fid: feature extractor 'classifier' needs a classifier with .features")
        metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), reset_real_features=False)
    else:
        metric = _inception_fid(weights)
    metric.orig_dtype = torch.float32  # compute() reads it even on a process that saw no images
    return metric


def _inception_fid(weights: str | None) -> FrechetInceptionDistance:
    """torchmetrics' FID on torch-fidelity's Inception-v3, its weights from `weights` (a local
    file), else torch's hub cache, else the download; every failure is one line naming
    `score.fid_weights` and the file expected."""
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise HarnessError(f"{weights}: no such file (give torch-fidelity's Inception weights, {INCEPTION_FILE}, "
                               f"or pytorch-fid's {PYTORCH_FID_FILE})",
                               key="score.fid_weights", rooted=True)
    elif not inception_cached() and not url_reachable(INCEPTION_URL):
        raise HarnessError(f"fid: the Inception weights {INCEPTION_FILE} are not in torch's hub cache "
                           f"({inception_cache_path()}) and {urlparse(INCEPTION_URL).hostname} cannot be reached; "
                           f"give a local copy with --fid-weights FILE (score.fid_weights; pytorch-fid's "
                           f"{PYTORCH_FID_FILE} serves too)")
    try:
        return FrechetInceptionDistance(feature=2048, reset_real_features=False,
                                        feature_extractor_weights_path=None if path is None else str(path))
    except ModuleNotFoundError:
        raise HarnessError("fid: the Inception features need torch-fidelity (pip install torch-fidelity)") from None
    except Exception as error:  # a wrong or corrupt file, a failed download
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
        if path is not None:
            raise HarnessError(f"{weights}: not torch-fidelity's Inception-v3 weights {INCEPTION_FILE} ({reason})",
                               key="score.fid_weights", rooted=True) from None
        raise HarnessError(f"fid: cannot download the Inception weights {INCEPTION_URL} ({reason}); "
                           f"give a local copy with --fid-weights FILE (score.fid_weights)") from None


def inception_cache_path() -> Path:
    """Where torch's hub cache keeps the downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_cached() -> bool:
    """Whether the Inception weights are in torch's hub cache (no download needed)."""
    return inception_cache_path().is_file()


def reference_key(source: str, size: tuple[int, int], feature_id: str) -> str:
    """A hash naming the reference statistics of `source` at `size` under one feature extractor."""
    folder = Path(source)
    if not folder.is_dir():
        if _named_reference(source, size, 1) is None:
            raise HarnessError(f"fid reference {source}: no such folder, and no world names a reference set so")
        listing: object = source
    else:
        listing = [
            (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in _reference_files(folder)
        ]
    text = json.dumps({"source": listing, "size": list(size), "features": feature_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def feature_id(metric: FrechetInceptionDistance) -> str:
    """A hash of the feature extractor's weights, so new weights never reuse old statistics."""
    digest = hashlib.sha256()
    for name, tensor in sorted(metric.inception.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{type(metric.inception).__name__}:{digest.hexdigest()[:24]}"


def load_reference(
    metric: FrechetInceptionDistance,
    source: str,
    size: tuple[int, int],
    channels: int,
    cache_dir: Path,
    key: str,
    batch_size: int,
) -> None:
    """Fill the metric's real statistics from the cache, or compute and cache them."""
    from harness.models.checkpoints import save_tensors

    path = cache_dir / f"fid-reference-{key}.safetensors"
    if path.is_file():
        states = load_file(str(path))
        device = metric.real_features_sum.device
        for name in REAL_STATES:
            setattr(metric, name, states[name].to(device))
        log.debug("fid: reference statistics from %s", path)
        return
    count = 0
    for batch in _reference_batches(source, size, channels, batch_size):
        metric.update(batch.to(metric.real_features_sum.device), real=True)
        count += len(batch)
    if count < 2:
        raise HarnessError(f"fid reference {source}: needs at least 2 images, found {count}")
    save_tensors({name: getattr(metric, name).cpu() for name in REAL_STATES}, path, metadata={"source": source})
    log.info("fid: %d reference images from %s, statistics cached in %s", count, source, path)


def _reference_batches(source: str, size: tuple[int, int], channels: int, batch_size: int) -> Iterator[torch.Tensor]:
    folder = Path(source)
    if not folder.is_dir():
        named = _named_reference(source, size, batch_size)
        assert named is not None  # reference_key checked it
        for batch in named:
            yield torch.stack([_fit(image, size, channels) for image in batch])
        return
    if GenerationFiles(folder).shards():
        batch = []
        for shard in GenerationFiles(folder).shards():
            for sample in shards.read_shard(shard):
                batch.append(_fit(sample.image, size, channels))
                if len(batch) == batch_size:
                    yield torch.stack(batch)
                    batch = []
        if batch:
            yield torch.stack(batch)
        return
    files = _reference_files(folder)
    for start in range(0, len(files), batch_size):
        yield torch.stack([_load_image(f, size, channels) for f in files[start : start + batch_size]])


def _named_reference(source: str, size: tuple[int, int], batch_size: int) -> Iterator[torch.Tensor] | None:
    from harness.world import reference_images

    return reference_images(source, size, batch_size)


def _reference_files(folder: Path) -> list[Path]:
    shard_files = GenerationFiles(folder).shards()
    return shard_files or sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _load_image(path: Path, size: tuple[int, int], channels: int) -> torch.Tensor:
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size[1], size[0]), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image).copy())
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)


def _fit(image: torch.Tensor, size: tuple[int, int], channels: int) -> torch.Tensor:
    if image.shape[0] != channels:
        image = (
            image.expand(channels, -1, -1)
            if image.shape[0] == 1
            else image.float().mean(0, keepdim=True).round().to(torch.uint8)
        )
    if tuple(image.shape[1:]) != size:
        image = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
        image = image.round().clamp(0, 255).to(torch.uint8)
    return image
