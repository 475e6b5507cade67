"""Prompt-suite manifests: one YAML per suite (shipped in harness/resources/manifests/), naming
where its file comes from (a public URL or a hub dataset), the file's name and sha256, the
columns to read and the row count. This module reads manifests, verifies local copies and
fetches missing ones.

Local copies live in a data directory: `--data-dir`, else `$HARNESS_DATA_DIR`, else the cache's
`data/` (`$HARNESS_CACHE/data`). Manifests are read from `$HARNESS_MANIFEST_DIR` when set, else
from the package's own.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Ge

from harness.atomic import atomic_path
from harness.cache import cache_dir
from harness.config import check_bounds, load_yaml, parse_dataclass
from harness.errors import HarnessError, in_file
from harness.records import file_digest
from harness.resources import resource_dir

log = logging.getLogger(__name__)

DATA_DIR_ENV = "HARNESS_DATA_DIR"
MANIFEST_DIR_ENV = "HARNESS_MANIFEST_DIR"
ROLES = ("prompt", "seed", "guidance", "label")
SuiteKind = Literal["objects", "artists", "nudity", "captions"]


@dataclass
class Columns:
    """Which column holds each field: a header name, or a 0-based index for headerless files."""

    prompt: str | int
    seed: str | int | None = None
    guidance: str | int | None = None
    label: str | int | None = None


@dataclass
class ManifestFile:
    """One upstream file of a suite and where to get it."""

    name: str
    """The file's name in the data directory."""
    sha256: str | None
    """Checksum of the upstream file; null only for a source that could not be pinned."""
    url: str | None = None
    """A public URL of the file (pinned to a commit where the host allows)."""
    hub: str | None = None
    """A Hugging Face hub dataset id holding the file."""
    hub_path: str | None = None
    """The file's path inside the hub dataset; null when it is not known."""
    revision: str | None = None
    columns: dict[str, str | int] = field(default_factory=dict)
    """Per-file column overrides (e.g. one artist file names its column `artist`)."""

    def __post_init__(self) -> None:
        if not self.url and not self.hub:
            raise ValueError(f"file '{self.name}' needs a 'url' or a 'hub' source")
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ValueError(f"file '{self.name}': unknown column role '{unknown[0]}' (allowed: {', '.join(ROLES)})")


@dataclass
class Manifest:
    """A prompt suite described by a YAML file in data_manifests/."""

    name: str
    description: str
    kind: SuiteKind
    format: Literal["csv", "csv-headerless", "lines"]
    files: list[ManifestFile]
    columns: Columns
    count: Annotated[int, Ge(1)]
    license: str
    default_seed: int = 0
    """The seed of rows without a seed column (the reference code seeds every prompt with 0)."""
    metrics: list[str] = field(default_factory=list)
    """The metrics this suite is scored with by default."""
    source: str = ""
    """The manifest's own path (set on load)."""

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("'files' must list at least one file")
        check_bounds(self)
        if self.format == "lines" and any(getattr(self.columns, role) is not None for role in ROLES[1:]):
            raise ValueError("format 'lines' holds prompts only: columns seed, guidance and label must be unset")


def manifest_dir() -> Path:
    """The folder of manifest YAML files."""
    env = os.environ.get(MANIFEST_DIR_ENV)
    return Path(env) if env else resource_dir("manifests")


def data_dir(explicit: str | Path | None = None) -> Path:
    """The folder of local prompt files: the argument, else $HARNESS_DATA_DIR, else the cache's data/."""
    for value in (explicit, os.environ.get(DATA_DIR_ENV)):
        if value:
            folder = Path(value).expanduser()
            if folder.exists() and not folder.is_dir():
                raise HarnessError(f"data directory {folder}: not a folder")
            return folder
    return cache_dir("data")


def manifest_names() -> list[str]:
    """Names of the suites that have a manifest, sorted."""
    folder = manifest_dir()
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def load_manifest(name: str) -> Manifest:
    """Read and validate `data_manifests/<name>.yaml`."""
    path = manifest_dir() / f"{name}.yaml"
    if "source" in (data := load_yaml(path)):
        raise HarnessError(f"{path}: unknown key 'source'")
    with in_file(path):
        manifest = parse_dataclass(Manifest, data)
    if manifest.name != name:
        raise HarnessError(f"{path}: name '{manifest.name}' does not match the file name '{name}'")
    manifest.source = str(path)
    return manifest


def check_file(manifest: Manifest, entry: ManifestFile, folder: Path) -> Path:
    """The local copy of `entry`, after checking it exists and matches its sha256."""
    path = folder / entry.name
    if not path.is_file():
        raise HarnessError(
            f"suite {manifest.name}: missing file {path} (run `harness data --fetch {manifest.name}` "
            f"or point --data-dir/${DATA_DIR_ENV} at a folder holding it)"
        )
    if entry.sha256 is not None and (actual := file_digest(path)) != entry.sha256:
        raise HarnessError(f"suite {manifest.name}: {path} has sha256 {actual}, expected {entry.sha256}")
    return path


def read_rows(manifest: Manifest, folder: Path) -> list[dict[str, str | None]]:
    """All rows of a suite, each as {role: text} for the roles its columns name, in file order."""
    rows: list[dict[str, str | None]] = []
    for entry in manifest.files:
        path = check_file(manifest, entry, folder)
        columns = {role: getattr(manifest.columns, role) for role in ROLES} | entry.columns
        rows.extend(_read_file(manifest, path, columns))
    if len(rows) != manifest.count:
        raise HarnessError(f"suite {manifest.name}: read {len(rows)} rows, the manifest says {manifest.count}")
    return rows


def _read_file(manifest: Manifest, path: Path, columns: dict[str, str | int | None]) -> list[dict[str, str | None]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise HarnessError(
            f"suite {manifest.name}: {path.name} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    if manifest.format == "lines":
        return [{"prompt": line.strip()} for line in text.split("\n") if line.strip()]
    table = list(csv.reader(io.StringIO(text, newline="")))
    if manifest.format == "csv":
        header, body = (table[0], table[1:]) if table else ([], [])
        where = {role: _header_index(manifest, path, header, col) for role, col in columns.items() if col is not None}
    else:
        body = table
        width = min((len(row) for row in body), default=0)
        where = {}
        for role, col in columns.items():
            if col is None:
                continue
            if not isinstance(col, int) or not 0 <= col < max(width, 1):
                raise HarnessError(f"suite {manifest.name}: {path.name} has no column {col!r} for '{role}'")
            where[role] = col
    return [{role: row[index] if index < len(row) else None for role, index in where.items()} for row in body]


def _header_index(manifest: Manifest, path: Path, header: list[str], column: str | int) -> int:
    if isinstance(column, int):
        return column
    if column not in header:
        raise HarnessError(
            f"suite {manifest.name}: {path.name} has no column '{column}' (columns: {', '.join(header)})"
        )
    return header.index(column)


def fetch(manifest: Manifest, folder: Path) -> list[Path]:
    """Download every missing or mismatching file of a suite into `folder`, checking sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest.files:
        path = folder / entry.name
        if path.is_file() and (entry.sha256 is None or file_digest(path) == entry.sha256):
            paths.append(path)
            continue
        paths.append(_download(manifest, entry, path))
    return paths


def _download(manifest: Manifest, entry: ManifestFile, path: Path) -> Path:
    with atomic_path(path) as tmp:
        if entry.url:
            log.info("fetching %s", entry.url)
            try:
                with urllib.request.urlopen(entry.url, timeout=60) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as error:
                raise HarnessError(f"suite {manifest.name}: cannot fetch {entry.url} ({error})") from None
        else:
            _download_from_hub(manifest, entry, tmp)
        if entry.sha256 is not None and (actual := file_digest(tmp)) != entry.sha256:
            raise HarnessError(
                f"suite {manifest.name}: fetched {entry.name} has sha256 {actual}, expected {entry.sha256}"
            )
    return path


def _download_from_hub(manifest: Manifest, entry: ManifestFile, tmp: Path) -> None:
    if not entry.hub_path:
        raise HarnessError(
            f"suite {manifest.name}: the file's path in hub dataset {entry.hub} is not pinned; save its "
            f"prompts as {entry.name} in the data directory (columns: {manifest.columns.prompt})"
        )
    from huggingface_hub import hf_hub_download

    log.info("fetching %s from hub dataset %s", entry.hub_path, entry.hub)
    try:
        cached = hf_hub_download(entry.hub, entry.hub_path, repo_type="dataset", revision=entry.revision)
    except Exception as error:  # network, authentication (gated sets) and missing files all end here
        raise HarnessError(
            f"suite {manifest.name}: cannot fetch {entry.hub_path} from {entry.hub} ({type(error).__name__})"
        ) from None
    shutil.copyfile(cached, tmp)
