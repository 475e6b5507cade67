"""Logging: short lines on the console (what each stage did), the detail in a log file.

The console shows the harness's INFO lines as they are and other libraries' warnings; with
`--verbose`, every DEBUG line too. A run directory's log file gets everything at DEBUG level
with timestamps.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ConsoleHandler(logging.StreamHandler):
    """The harness's console handler (one at a time on the root logger)."""


def setup_console(verbose: bool) -> None:
    """One console handler on the root logger: the harness's lines, other libraries' warnings."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ConsoleHandler):
            root.removeHandler(handler)
    handler = ConsoleHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else FILE_FORMAT))
    handler.addFilter(lambda record: record.name.startswith("harness") or record.levelno >= logging.WARNING)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("harness").setLevel(logging.DEBUG)


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Also write every harness DEBUG line (and other libraries' INFO lines) to `path` in the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.addFilter(lambda record: record.name.startswith("harness") or record.levelno >= logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
