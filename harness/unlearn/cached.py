"""Unlearned models kept in the harness cache (`$HARNESS_CACHE/unlearned/KEY/`), keyed by the
unlearn job's settings key (base model content, concept, method entry, sampling, fidelity), so a
row marked `cache` (the automatic control rows) is trained once per model and reused by every
later run. Both copies are published whole (harness.atomic.publish_folder): a half-written
folder is never taken as done."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from harness.atomic import publish_folder
from harness.cache import cache_dir
from harness.layout import UnlearnFiles
from harness.records import UnlearnRecord, completed

log = logging.getLogger(__name__)


def cached_folder(key: str) -> Path:
    """Where the cache keeps the unlearned model of settings key `key`."""
    return cache_dir("unlearned") / key


def complete(folder: Path, key: str) -> UnlearnRecord | None:
    """The record of an unlearn output in `folder` made with `key`, None unless all of it is there."""
    files = UnlearnFiles(folder)
    record = completed(UnlearnRecord, files.record, key)
    return record if record is not None and files.tensors.is_file() and files.mask.is_file() else None


def copy_output(source: Path, target: Path, key: str) -> None:
    """Publish `source`'s tensors, mask and record as `target` (no training checkpoints), unless
    another process published a complete one of `key` there first."""
    def fill(folder: Path) -> None:
        for name in ("tensors", "mask", "record"):
            shutil.copyfile(getattr(UnlearnFiles(source), name), getattr(UnlearnFiles(folder), name))

    publish_folder(target, fill, replace=False, is_complete=lambda folder: complete(folder, key) is not None)


def run_cached(key: str, out: Path, name: str, unlearn: Callable[[], UnlearnRecord]) -> UnlearnRecord:
    """The unlearn output of `key` in `out`: from the cache when it holds it, else made by
    `unlearn()` and then stored in the cache."""
    stored = cached_folder(key)
    if complete(out, key) is None and complete(stored, key) is not None:
        copy_output(stored, out, key)
        log.info("unlearn %s: reused from the harness cache (%s)", name, stored)
    record = unlearn()
    if complete(stored, key) is None:
        copy_output(out, stored, key)
        log.info("unlearn %s: kept in the harness cache (%s)", name, stored)
    return record
