"""Image grids: one row per model of the matrix (pretrained, each method, each attack on it), one
column per prompt, the same prompt ids and seeds in every row, read straight from the run's
WebDataset shards.

Columns are prompts of the erased concept when the suite has any (by label or prompt text),
else prompts spread evenly over the suite. A model without that image gets a grey `missing` cell.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.records import normalise_label
from harness.report.plots import DPI, plt, save_figure
from harness.report.runs import RunData

CELL = 1.9
"""Inches per image cell."""
LABEL_WIDTH = 1.5
TITLE_HEIGHT = 0.8


@dataclass(frozen=True)
class GridEntry:
    """A chosen prompt: its id, record, and the shard file name that holds it."""

    id: int
    record: dict
    shard: str


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """Pixel (width, height) of a grid PNG with `rows` models and `columns` prompts."""
    return round((LABEL_WIDTH + CELL * columns) * DPI), round((TITLE_HEIGHT + CELL * rows) * DPI)


def shard_records(path: Path) -> list[dict]:
    """The JSON records of one shard, without decoding its images."""
    with tarfile.open(path, "r") as tar:
        return [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]


def choose(run: RunData, suite: str, columns: int) -> list[GridEntry]:
    """Up to `columns` prompts of `suite`, from the first model that has shards of it."""
    files = next((run.layout.images(m, suite) for m in run.models if run.layout.images(m, suite).shards()), None)
    if files is None:
        return []
    entries = [GridEntry(r["id"], r, shard.name) for shard in files.shards()
               for r in shard_records(shard)]
    entries.sort(key=lambda e: e.id)
    if run.targets:
        targets = [normalise_label(t) for t in run.targets]
        matching = [e for e in entries if normalise_label(e.record.get("label") or "") in targets
                    or any(t in normalise_label(e.record.get("prompt", "")) for t in targets)]
        entries = matching or entries
    if len(entries) <= columns:
        return entries
    picks = np.linspace(0, len(entries) - 1, columns).round().astype(int)
    return [entries[i] for i in dict.fromkeys(picks.tolist())]


def read_image(path: Path, sample_id: int) -> np.ndarray | None:
    """The image of `sample_id` in shard `path` as an array, or None when absent."""
    if not path.is_file():
        return None
    with tarfile.open(path, "r") as tar:
        try:
            member = tar.getmember(f"{sample_id:08d}.png")
        except KeyError:
            return None
        with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
            return np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16") else "RGB"))


def write_grid(run: RunData, suite: str, path: Path, columns: int = 6, method: str | None = None) -> Path | None:
    """The grid of `suite` for every model of `run` (or, with `method`, for the pretrained model,
    that method's unlearned model and each attack on it); None when no model has images of it."""
    entries = choose(run, suite, columns)
    if not entries:
        return None
    models = [m for m in run.models if m.step is None and (method is None or m.method in (method, "pretrained"))]
    width, height = grid_size(len(models), len(entries))
    figure = plt.figure(figsize=(width / DPI, height / DPI))
    for row, model in enumerate(models):
        for column, entry in enumerate(entries):
            left = (LABEL_WIDTH + CELL * column + 0.05) * DPI / width
            bottom = (CELL * (len(models) - 1 - row) + 0.05) * DPI / height
            axes = figure.add_axes((left, bottom, (CELL - 0.1) * DPI / width, (CELL - 0.1) * DPI / height))
            axes.set_xticks([])
            axes.set_yticks([])
            image = read_image(run.layout.images(model, suite).folder / entry.shard, entry.id)
            if image is None:
                axes.set_facecolor("0.93")
                axes.text(0.5, 0.5, "missing", ha="center", va="center", color="firebrick", transform=axes.transAxes)
            else:
                axes.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255,
                            interpolation="nearest")
            if row == 0:
                prompt = textwrap.shorten(entry.record.get("prompt", ""), 60)
                axes.set_title("\n".join(textwrap.wrap(prompt, 24)[:2]) + f"\nid {entry.id}, seed {entry.record.get('seed')}",
                               fontsize=7)
            if column == 0:
                figure.text(0.1 * DPI / width, bottom + (CELL - 0.1) * DPI / height / 2,
                            "\n".join(textwrap.wrap(model.label, 18)), fontsize=8, va="center", ha="left")
    return save_figure(figure, path)
