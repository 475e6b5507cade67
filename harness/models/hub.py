"""Reaching the model hub: weights come from a local path, the hub's local cache, or a download
that is tried only when the hub answers, so a machine without network gets one clear line (which
weights, which option gives a local path) instead of a minute of retries."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (`$HF_ENDPOINT`) accepts a connection; False when offline mode is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def unreachable_message(what: str, option: str) -> str:
    """The one line for weights that are neither local nor downloadable."""
    return (f"{what}: not in the local hub cache and the hub cannot be reached; "
            f"give a local copy with {option}")
