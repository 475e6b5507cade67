"""Where the miniature world lives, and how it gets there: shipped weights, or a build.

A world folder (`<cache>/zoo/digits`, cache `$HARNESS_CACHE` or `~/.cache/harness`) holds
`pipeline/` (a `DigitsPipeline.save_pretrained` folder), `classifier.safetensors`,
`classifier.json` and `build_report.json`. On first use it is installed from the weights shipped
in the package (fp16 on disk, fp32 in the cache; `shipped.sha256` records which), and again when
the package ships new ones; `harness zoo build digits` retrains it. A world
folder appears only when complete: it is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from harness.atomic import publish_folder
from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.models.checkpoints import load_tensor_file, save_tensors
from harness.outputs import check_output
from harness.provenance import provenance, write_json_atomic
from harness.worlds.digits.classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    DigitClassifier,
    save_classifier,
    train_classifier,
)
from harness.worlds.digits.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    IMAGE_SIZE,
    DigitsPipeline,
)
from harness.worlds.digits.quality import generation_accuracy
from harness.worlds.digits.train import TrainSettings, train_generator

log = logging.getLogger(__name__)

WORLDS = ("digits",)
REPORT_FILE = "build_report.json"
SHIPPED_MARKER = "shipped.sha256"
EARLIER_SHIPPED_REPORTS = frozenset({"3d04e9ec8662f4b04c11122178b8035d4a99e1297ef84f8581b8707955d4b24f"})
"""Build-report digests of worlds shipped before installs were marked (the first world, whose
digits ConceptPrune could not erase): caches holding one are installed again."""
PIPELINE_DIR = "pipeline"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


@dataclass
class BuildSettings:
    """A world build: the generator's training, the classifier's epochs, the final measurement."""

    train: TrainSettings = field(default_factory=TrainSettings)
    classifier_epochs: int = 20
    eval_per_digit: int = 100
    eval_steps: int = DEFAULT_STEPS
    eval_guidance: float = DEFAULT_GUIDANCE


def world_dir(name: str = "digits", cache_root: str | Path | None = None) -> Path:
    """The folder of world `name` under the cache root (default: the harness cache; not necessarily present)."""
    check_name(name)
    if cache_root:
        return check_output(Path(cache_root).expanduser() / "zoo", "--cache-dir") / name
    zoo = cache_dir("zoo")
    if zoo.exists() and not zoo.is_dir():
        raise HarnessError(f"{zoo}: not a folder (the world cache needs it as one)")
    return zoo / name


def check_name(name: str) -> None:
    """Raise unless `name` is a known world."""
    if name not in WORLDS:
        raise HarnessError(f"zoo world '{name}': unknown (known: {', '.join(WORLDS)})")


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a whole world."""
    return all(
        (folder / part).is_file()
        for part in (f"{PIPELINE_DIR}/model_index.json", WEIGHTS_FILE, CONFIG_FILE, REPORT_FILE)
    )


def ensure_world(cache_root: str | Path | None = None) -> Path:
    """The digits world's folder, installed from the shipped weights (or built) on first use, and
    installed again when the package ships other weights than the ones the cache holds (a world
    built with `harness zoo build` is never replaced)."""
    folder = world_dir("digits", cache_root)
    present = is_complete(folder)
    outdated = present and _outdated_install(folder)
    if present and not outdated:
        return folder
    if is_complete(SHIPPED_DIR):
        log.info("installing the shipped digits world into %s%s", folder, " (it held older shipped weights)" * outdated)
        publish_folder(folder, _install_shipped, replace=outdated, is_complete=is_complete)
    else:
        log.info("building the digits world into %s (no shipped weights found)", folder)
        build_world(folder, BuildSettings())
    return folder


def build_world(folder: str | Path, settings: BuildSettings) -> dict:
    """Train the classifier and the generator into `folder` (replacing it); returns the build report."""
    folder = Path(folder)
    report: dict = {}

    def build(tmp: Path) -> None:
        report.update(_build_into(tmp, settings))

    publish_folder(folder, build)
    return report


def _build_into(tmp: Path, settings: BuildSettings) -> dict:
    started = time.time()
    classifier, classifier_report = train_classifier(IMAGE_SIZE, settings.classifier_epochs, settings.train.seed)
    frozen = installed_text_encoder() if settings.train.exclude else None
    pipeline, history = train_generator(settings.train, classifier, IMAGE_SIZE, frozen)
    return finish_world(tmp, settings, classifier, classifier_report, pipeline, history, time.time() - started)


def installed_text_encoder() -> torch.nn.Module:
    """The installed world's text encoder (a world trained without some digits keeps it)."""
    return DigitsPipeline.from_pretrained(ensure_world() / PIPELINE_DIR).text_encoder


def finish_world(
    folder: Path,
    settings: BuildSettings,
    classifier: DigitClassifier,
    classifier_report: dict,
    pipeline: DigitsPipeline,
    history: list[dict],
    seconds: float,
) -> dict:
    """Round the trained models to fp16 values, save them, measure the generator, write the report."""
    _round_to_fp16(classifier, pipeline.unet, pipeline.text_encoder)
    save_classifier(classifier, classifier_report, folder)
    pipeline.save_pretrained(folder / PIPELINE_DIR)
    log.info("measuring the generator: %d images per digit", settings.eval_per_digit)
    quality = generation_accuracy(
        pipeline, classifier.eval(), per_digit=settings.eval_per_digit,
        num_inference_steps=settings.eval_steps, guidance_scale=settings.eval_guidance,
    )
    report = {
        "world": "digits",
        "build_command": f"harness zoo build digits --steps {settings.train.steps} --seed {settings.train.seed}"
        f" --ffn-routing {settings.train.ffn_routing} --ffn-selectivity {settings.train.ffn_selectivity}"
        + (f" --init-from {settings.train.init_from}" if settings.train.init_from else "")
        + "".join(f" --exclude {d}" for d in settings.train.exclude),
        "settings": asdict(settings),
        "seconds": round(seconds, 1),
        "classifier": classifier_report,
        "generation_history": history,
        "generation_accuracy": quality,
        "weights": "fp16-exact values (stored fp32 in the cache, fp16 when shipped)",
        "provenance": provenance(),
    }
    write_json_atomic(folder / REPORT_FILE, report)
    log.info("generation accuracy: mean %.3f, worst digit %.3f", quality["mean"], quality["min"])
    return report


def _round_to_fp16(*modules: torch.nn.Module) -> None:
    """Make every weight exactly representable in fp16, so shipping in fp16 loses nothing."""
    with torch.no_grad():
        for module in modules:
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def report_digest(folder: Path) -> str:
    """A world's identity: the SHA-256 of its build report."""
    return hashlib.sha256((folder / REPORT_FILE).read_bytes()).hexdigest()


def _outdated_install(folder: Path) -> bool:
    """Whether `folder` was installed from shipped weights other than the package's own."""
    marker = folder / SHIPPED_MARKER
    if marker.is_file():
        return is_complete(SHIPPED_DIR) and marker.read_text().strip() != report_digest(SHIPPED_DIR)
    return report_digest(folder) in EARLIER_SHIPPED_REPORTS


def _install_shipped(tmp: Path) -> None:
    _copy_world(SHIPPED_DIR, tmp, torch.float32)
    (tmp / SHIPPED_MARKER).write_text(report_digest(SHIPPED_DIR) + "\n")


def export_world(folder: str | Path, destination: str | Path) -> Path:
    """Write a world in shippable form (fp16 tensors, same files) to `destination`."""
    folder, destination = Path(folder), Path(destination)
    if not is_complete(folder):
        raise HarnessError(f"{folder}: not a complete world (expected {PIPELINE_DIR}/, {WEIGHTS_FILE}, {REPORT_FILE})")
    publish_folder(destination, lambda tmp: _copy_world(folder, tmp, torch.float16))
    return destination


def _copy_world(source: Path, destination: Path, dtype: torch.dtype) -> None:
    """Copy a world's files, casting the floating-point tensors of every safetensors file to `dtype`
    (configs keep their own dtype entry: the cache's is what gets loaded)."""
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name != SHIPPED_MARKER):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
            tensors = load_tensor_file(path)
            save_tensors({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, target, metadata)
        elif path.name == "model_index.json":  # drop the local path diffusers records
            index = json.loads(path.read_text())
            index.pop("_name_or_path", None)
            write_json_atomic(target, index)
        else:
            shutil.copyfile(path, target)
