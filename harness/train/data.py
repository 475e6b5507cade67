"""Training data in the UNet's input space: samples with their prompts, from a world's real
labelled images, a folder of image + caption pairs, WebDataset shards, or the model's own samples.

A latent pipeline (one with a VAE) gets its images encoded to latents; a pixel-space pipeline
gets them in [-1, 1]. Images are resized to the model's size (centre crop, then resize).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from annotated_types import Ge
from PIL import Image, UnidentifiedImageError
from torch.nn import functional as F

from harness.config import check_bounds
from harness.errors import HarnessError, keyed
from harness.inputs import INPUT_PATH
from harness.settings.generate import GenerationSettings
from harness.tars import tar_samples
from harness.train.concept_filter import drop_concept_samples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GENERATED_SOURCES = ("world-prompts", "suite", "prompts")
"""Sources whose samples a model draws (an attacker's D_au)."""


@dataclass
class DataSpec:
    """Where a training set comes from (a method's or an attack's `data` params)."""

    source: Literal["world", "world-prompts", "folder", "webdataset", "suite", "prompts"] = "world"
    """world: the base world's real images (D_r); world-prompts: generated images of the world's
    neutral prompts and its other classes' prompts (D_au), as many as its real images of those
    classes unless `count`; folder: image + .txt caption pairs; webdataset: tar shards; suite:
    generated images of a prompt suite; prompts: of the given prompts"""
    path: str | None = None
    """the folder, the shard pattern, or the suite's name"""
    prompts: list[str] = field(default_factory=list)
    """the prompts to generate from (source prompts)"""
    count: Annotated[int, Ge(1)] | None = None
    """at most this many samples (suite and prompts: how many to generate)"""
    split: Literal["train", "heldout"] = "train"
    """the world's split (source world)"""
    concept_filter: str = "auto"
    """for generated sets (suite, prompts) that must not hold a concept: the classifier whose
    images of it are dropped (auto: the world's, resnet50 for objects; none; a registered name)"""
    concept_filter_weights: str | None = field(default=None, metadata=INPUT_PATH)
    """local weights of that classifier"""

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.source in ("folder", "webdataset", "suite") and not self.path:
            raise ValueError(f"source {self.source} needs a 'path'")
        if self.source == "prompts" and not self.prompts:
            raise ValueError("source prompts needs 'prompts'")


def build_set(pipeline: Any, spec: DataSpec, generation: GenerationSettings, base_model: str, seed: int,
              exclude: list[str], data_dir: str | None = None, kind: str | None = None,
              cached_as: str | None = None) -> TrainingSet:
    """The training set `spec` names. `exclude` are concepts (of `kind`) the set must not hold
    (the erased ones, for an attacker's data): left out of a world's labels, an error where a
    caption or prompt names one, and dropped from generated samples where the concept filter's
    classifier sees one (`dropped` counts them). A generated set drawn by an unchanged model
    (`cached_as`, its source) is kept in the cache for the next cell. Errors are keyed at the spec."""
    from harness.world import world_of_source

    size = model_size(pipeline, generation)
    if spec.source == "world":
        world = world_of_source(base_model)
        if world is None:
            raise HarnessError(f"'world' needs a world's model (zoo:NAME), not {base_model}", key="source")
        found = world_set(pipeline, world, spec.split, size, set(exclude))
    elif spec.source == "folder":
        found = folder_set(pipeline, spec.path, size)
    elif spec.source == "webdataset":
        found = webdataset_set(pipeline, spec.path, size)
    else:
        prompts = list(spec.prompts)
        if spec.source == "world-prompts":
            prompts = _world_prompts(base_model, spec, exclude)
        if spec.source == "suite":
            from harness.generate.suites import load_suite

            with keyed("path"):
                prompts = [r.prompt for r in load_suite(spec.path, data_dir).records]
        found = generated_set(pipeline, prompts[: spec.count] if spec.count else prompts, generation, seed,
                              f"{spec.source} samples", cached_as)
    for concept in exclude if spec.source != "world" else []:
        named = mentions(found.prompts, concept)
        if named:
            raise HarnessError(f"{len(named)} of its prompts name the erased concept '{concept}' "
                               f"(e.g. {named[0]!r}); the set must not hold it", key="")
    if exclude and spec.source in GENERATED_SOURCES:
        found = _without_concepts(pipeline, found, spec, exclude, base_model, kind)
    if spec.count is not None and len(found.inputs) > spec.count:
        found = TrainingSet(found.inputs[: spec.count], found.prompts[: spec.count], found.labels[: spec.count],
                            found.source, found.dropped)
    return found


def _world_prompts(base_model: str, spec: DataSpec, exclude: list[str]) -> list[str]:
    """The world's neutral prompts and its other classes' prompts, cycled to the size of its real
    training images of those classes (or `count`)."""
    from harness.world import world_of_source

    world = world_of_source(base_model)
    if world is None:
        raise HarnessError(f"'world-prompts' needs a world's model (zoo:NAME), not {base_model}", key="source")
    found = world.labelled_images(spec.split, 8)
    if found is None:
        raise HarnessError(f"world {world.name} has no labelled images", key="source")
    labels = [label for label in found[1] if label not in set(exclude)]
    pool = [*world.neutral_prompts(), *(p for label in dict.fromkeys(labels) for p in world.label_prompts(label))]
    size = spec.count or len(labels)
    return [pool[i % len(pool)] for i in range(size)]


def _without_concepts(pipeline: Any, found: TrainingSet, spec: DataSpec, exclude: list[str], base_model: str,
                      kind: str | None) -> TrainingSet:
    """A generated set without the samples the concept filter's classifier names as one of `exclude`."""
    from harness.score.metrics.classifiers import concept_classifier

    classifier = concept_classifier(spec.concept_filter, base_model, kind or "")
    with keyed("concept_filter"):
        outcome = drop_concept_samples(pipeline, found.inputs, exclude, classifier, spec.concept_filter_weights)
    kept = outcome.kept_index
    return TrainingSet(found.inputs[kept], [found.prompts[i] for i in kept], [found.labels[i] for i in kept],
                       found.source, len(found.inputs) - len(kept))


def check_spec(spec: DataSpec, exclude: list[str], data_dir: str | None = None) -> None:
    """The cheap part of `build_set`, run before any work: the files exist and read whole, and no
    caption or prompt names an excluded concept (no model needed; images are not decoded).
    Errors are keyed at the spec."""
    if spec.source == "folder":
        with keyed("path"):
            prompts = [_folder_caption(path) for path in image_files(spec.path)]
    elif spec.source == "webdataset":
        with keyed("path"):
            prompts = [_caption(parts, f"{path}: sample {key}") for path in shard_paths(spec.path)
                       for key, parts in tar_samples(path)]
            if not prompts:
                raise HarnessError("the shards hold no samples", key="")
    elif spec.source == "suite":
        from harness.generate.suites import load_suite

        with keyed("path"):
            prompts = [r.prompt for r in load_suite(spec.path, data_dir).records]
    else:
        prompts = list(spec.prompts)
    for concept in exclude:
        named = mentions(prompts, concept)
        if named:
            raise HarnessError(f"{len(named)} of its prompts name the erased concept '{concept}' "
                               f"(e.g. {named[0]!r}); the set must not hold it", key="")


@dataclass
class TrainingSet:
    """Samples (N, C, H, W) in the UNet's input space and the prompt of each."""

    inputs: torch.Tensor
    prompts: list[str]
    labels: list[str | None]
    source: str
    dropped: int = 0
    """generated samples left out because a classifier saw an excluded concept in them"""

    def __post_init__(self) -> None:
        if len(self.inputs) == 0:
            raise HarnessError(f"{self.source}: no training samples", key="")

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """`size` samples drawn with replacement, and their prompts."""
        index = torch.randint(0, len(self.inputs), (size,), generator=generator)
        return self.inputs[index], [self.prompts[i] for i in index.tolist()]


def model_size(pipeline: Any, generation: GenerationSettings) -> int:
    """The image side a pipeline generates at (the generation settings', else the model's own)."""
    if generation.height is not None:
        return generation.height
    factor = getattr(pipeline, "vae_scale_factor", 1) if getattr(pipeline, "vae", None) is not None else 1
    return int(pipeline.unet.config.sample_size) * factor


def latent_shape(pipeline: Any, generation: GenerationSettings) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet input a pipeline samples for the generation settings'
    image size (else the model's own), as the pipeline does: pixels over the VAE's scale factor."""
    factor = getattr(pipeline, "vae_scale_factor", 1) if getattr(pipeline, "vae", None) is not None else 1
    side = int(pipeline.unet.config.sample_size) * factor
    height, width = generation.height or side, generation.width or side
    if height % factor or width % factor:
        raise HarnessError(f"height/width: must be multiples of the VAE's scale factor {factor}, got {height}x{width}",
                           key="generation", rooted=True)
    return int(pipeline.unet.config.in_channels), height // factor, width // factor


@torch.no_grad()
def encode(pipeline: Any, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) in the UNet's input space: VAE latents, or pixels in [-1, 1]."""
    vae = getattr(pipeline, "vae", None)
    x = images.float() * 2 - 1
    if vae is None:
        channels = pipeline.unet.config.in_channels
        return x.mean(1, keepdim=True) if channels == 1 and x.shape[1] == 3 else x
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    latents = [vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.mean for chunk in x.split(8)]
    return (torch.cat(latents) * vae.config.scaling_factor).float().cpu()


def world_set(pipeline: Any, world: Any, split: str, size: int, exclude: set[str]) -> TrainingSet:
    """A world's real images of every label but `exclude`, each captioned by one of its label's
    prompts (cycling through them)."""
    found = world.labelled_images(split, size)
    if found is None:
        raise HarnessError(f"world {world.name} has no labelled images", key="")
    images, labels = found
    keep = [i for i, label in enumerate(labels) if label not in exclude]
    if not keep:
        raise HarnessError(f"no images left once {sorted(exclude)} are left out", key="")
    kept_labels = [labels[i] for i in keep]
    assert not set(kept_labels) & exclude
    prompts_of = {label: world.label_prompts(label) for label in set(kept_labels)}
    prompts = [prompts_of[label][n % len(prompts_of[label])] for n, label in enumerate(kept_labels)]
    return TrainingSet(encode(pipeline, images[keep]), prompts, list(kept_labels), f"world {world.name} {split}")


def generated_set(pipeline: Any, prompts: list[str], generation: GenerationSettings, seed: int, source: str,
                  cached_as: str | None = None) -> TrainingSet:
    """The pipeline's own samples for `prompts`, sample i from seed `seed + i`; `source` labels
    them. With `cached_as` (the model source `pipeline` was loaded from, unchanged) they are
    kept in the harness cache and taken from it next time."""
    from harness.models.pipelines import model_samples
    from harness.train.sample_cache import cached_samples, sample_file

    if not prompts:
        raise HarnessError(f"{source}: no prompts to generate from", key="")

    def make() -> torch.Tensor:
        seeds = [seed + i for i in range(len(prompts))]
        return model_samples(pipeline, prompts, generation, seeds, source).float().cpu()

    samples = cached_samples(sample_file(cached_as, prompts, generation, seed), prompts, make) if cached_as else make()
    return TrainingSet(samples, list(prompts), [None] * len(prompts), source)


def image_files(folder: str | Path) -> list[Path]:
    """The image files of a folder (recursively, sorted); a keyed error when it holds none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise HarnessError(f"{folder} is not a folder", key="")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HarnessError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})", key="")
    return files


def folder_images(pipeline: Any, folder: str | Path, size: int) -> torch.Tensor:
    """The images of a folder in the UNet's input space (no captions needed)."""
    files = image_files(folder)
    return encode(pipeline, torch.stack([_read_image(p.read_bytes(), size, str(p)) for p in files]))


def folder_set(pipeline: Any, folder: str | Path, size: int) -> TrainingSet:
    """Images of a folder, each captioned by the text file of the same stem (`cat.png` + `cat.txt`)."""
    files = image_files(folder)
    images, prompts = [], []
    for path in files:
        prompts.append(_folder_caption(path))
        images.append(_read_image(path.read_bytes(), size, str(path)))
    return TrainingSet(encode(pipeline, torch.stack(images)), prompts, [None] * len(prompts), f"folder {folder}")


def webdataset_set(pipeline: Any, pattern: str, size: int) -> TrainingSet:
    """Samples of WebDataset tar shards (brace patterns allowed): an image member and a `txt`
    caption (or a `json` record with `prompt` or `caption`) per key."""
    images, prompts = [], []
    for path in shard_paths(pattern):
        for key, parts in tar_samples(path):
            image_ext = next((e for e in parts if f".{e}" in IMAGE_SUFFIXES), None)
            caption = _caption(parts, f"{path}: sample {key}")
            if image_ext is None or not caption:
                raise HarnessError(f"{path.name}: sample {key} lacks an image or a caption", key="")
            images.append(_read_image(parts[image_ext], size, f"{path.name}: {key}"))
            prompts.append(caption)
    if not images:
        raise HarnessError("the shards hold no samples", key="")
    return TrainingSet(encode(pipeline, torch.stack(images)), prompts, [None] * len(prompts), f"webdataset {pattern}")


def shard_paths(pattern: str) -> list[Path]:
    """The shard files of a brace pattern (`data-{000..009}.tar`); a missing one is a keyed error."""
    import braceexpand

    paths = [Path(p).expanduser() for p in braceexpand.braceexpand(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise HarnessError(f"no such shard {missing[0]}", key="")
    return paths


def _folder_caption(image: Path) -> str:
    """The caption of a folder's image: the text file of the same stem (`cat.png` + `cat.txt`)."""
    caption = image.with_suffix(".txt")
    if not caption.is_file():
        raise HarnessError(f"{image.name} has no caption file {caption.name}", key="")
    return caption.read_text().strip()


def _caption(parts: dict[str, bytes], name: str) -> str:
    """A sample's caption: its `txt` member, else its `json` record's `prompt` or `caption`."""
    try:
        text = parts.get("txt", b"").decode().strip()
        record = json.loads(parts["json"]) if not text and parts.get("json") else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HarnessError(f"{name}: unreadable caption ({error})", key="") from None
    if not isinstance(record, dict):
        raise HarnessError(f"{name}: its json member is not an object", key="")
    return text or str(record.get("prompt") or record.get("caption") or "").strip()


def _read_image(data: bytes, size: int, name: str) -> torch.Tensor:
    """RGB pixels in [0, 1] (3, size, size): centre-cropped square, resized; `name` names it in errors."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise HarnessError(f"{name}: not a readable image ({error})", key="") from None
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = torch.from_numpy(np.asarray(rgb.crop((left, top, left + side, top + side))).copy()).permute(2, 0, 1)
    return F.interpolate(square[None].float() / 255, size=(size, size), mode="bilinear", antialias=True)[0].clamp(0, 1)


def mentions(prompts: list[str], concept: str) -> list[str]:
    """The prompts that name `concept` (case-blind): what an auxiliary set must not hold."""
    word = concept.strip().lower()
    return [p for p in prompts if word and word in p.lower()]
