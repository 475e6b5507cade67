"""Reaching the model hub: weights come from a local path, the hub's local cache, or a download
that is tried only when the hub answers, so a machine without network gets one clear line (which
weights, which option gives a local path) instead of a minute of retries. A hub id that is known
to have moved (MOVED_IDS) gets its mirror named in that line."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from harness.errors import HarnessError

T = TypeVar("T")

MOVED_IDS = {
    "runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
}
"""Hub ids removed from the hub -> the mirror that holds the same files today (runwayml's
repositories were taken down in 2024; the SD-v1.5 files live on under `stable-diffusion-v1-5/`)."""

OTHER_BASELINE = "CompVis/stable-diffusion-v1-4"
"""The field's other base model, named beside a moved SD id's mirror."""


def mirror_hint(repo_id: str) -> str:
    """`; ... try its mirror X ...` for a hub id known to have moved, else ``."""
    moved = {old.lower(): new for old, new in MOVED_IDS.items()}.get(repo_id.strip().lower())
    if moved is None:
        return ""
    return (f"; {repo_id} was removed from the hub in 2024: try its mirror {moved}"
            f" (the field's other baseline is {OTHER_BASELINE})")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (`$HF_ENDPOINT`) accepts a connection; False when offline mode is set."""
    return url_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


@functools.cache
def url_reachable(address: str, timeout: float = 3.0) -> bool:
    """Whether the host of `address` accepts a connection; False when the hub's offline mode is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(address)
    try:
        with socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def unreachable_message(what: str, option: str, repo_id: str = "") -> str:
    """The one line for weights that are neither local nor downloadable (with the mirror of a
    moved `repo_id`)."""
    return (f"{what}: not in the local hub cache and the hub cannot be reached; "
            f"give a local copy with {option}{mirror_hint(repo_id)}")


def local_then_hub(load: Callable[..., T], source: str, what: str, option: str) -> T:
    """`load(local_files_only=True)` (a local folder or the hub cache), else `load()` when the hub
    answers; a one-line error naming `what` and, offline, the `option` that gives a local copy."""
    try:
        return load(local_files_only=True)
    except OSError as error:
        if Path(source).expanduser().exists():
            raise HarnessError(f"{what} '{source}': cannot load ({str(error).splitlines()[0]})") from None
        if not hub_reachable():
            raise HarnessError(unreachable_message(f"{what} '{source}'", option, source)) from None
    try:
        return load()
    except OSError as error:
        raise HarnessError(f"{what} '{source}': cannot load ({str(error).splitlines()[0]})") from None
