"""The one exception type the command line turns into a one-line error and a non-zero exit, and
how an error learns where it happened without a `where` argument threaded through every call.

Code that reads a value raises with the key it read, relative to what it was given:
`raise HarnessError("must lie in (0, 1]", key="top_k")`. Callers that know more of the path add
it on the way out (`with keyed("methods[0].params"): ...`), and the loader adds the file
(`with in_file(path): ...`), so the message reads
`recipes/x.yaml: methods[0].params.top_k: must lie in (0, 1]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class HarnessError(Exception):
    """A user-facing error: the message is one line that names the file, key or value at fault.

    Without `key`, the message is complete as it stands and `keyed` leaves it alone; with `key`
    (possibly empty), enclosing `keyed` blocks prefix their keys and `in_file` adds the file. A key
    `rooted` at the top of the file (`concept.kind`, read by code deep inside a method) gets the
    file but no prefix."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None, rooted: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.file = file
        self.rooted = rooted

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        return f"{where}: {self.message}" if where else self.message


def join_key(outer: str, inner: str) -> str:
    """`methods[0]` + `params.top_k` -> `methods[0].params.top_k`; `attacks` + `[1]` -> `attacks[1]`."""
    if not outer or not inner:
        return outer or inner
    return outer + inner if inner.startswith("[") else f"{outer}.{inner}"


@contextmanager
def keyed(key: str) -> Iterator[None]:
    """Prefix `key` to the key of a keyed HarnessError raised inside the block."""
    try:
        yield
    except HarnessError as error:
        if error.key is not None and error.file is None and not error.rooted:
            error.key = join_key(key, error.key)
        raise


@contextmanager
def in_file(file: object) -> Iterator[None]:
    """Name `file` in a keyed HarnessError raised inside the block (the innermost file wins)."""
    try:
        yield
    except HarnessError as error:
        if error.key is not None and error.file is None:
            error.file = str(file)
        raise
