"""The one cache root: `$HARNESS_CACHE`, else `~/.cache/harness`.

It holds the miniature worlds (`zoo/`), downloaded prompt data (`data/`), FID reference
statistics (`fid/`) and the unlearned models of cached rows such as the positive controls
(`unlearned/`); moving `HARNESS_CACHE` moves them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError

CACHE_ENV = "HARNESS_CACHE"


def cache_root() -> Path:
    """`$HARNESS_CACHE`, else `~/.cache/harness`; an existing non-folder there is a HarnessError."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harness").expanduser()
    if root.exists() and not root.is_dir():
        raise HarnessError(f"${CACHE_ENV}={root}: not a folder (point it at a folder, or unset it)")
    return root


def cache_dir(part: str) -> Path:
    """A part of the cache (`zoo`, `data`, `fid`, `unlearned`), not necessarily present yet."""
    folder = cache_root() / part
    if folder.exists() and not folder.is_dir():
        raise HarnessError(f"{folder}: not a folder (the harness cache needs it as one)")
    return folder
