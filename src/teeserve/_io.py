"""Small file helpers shared by every writer: atomic output and private files.

Strategy: nothing is ever written in place. Output goes to a hidden temporary file in the destination
folder, is flushed and fsynced, then renamed over the target, so a failure at any point (bad input,
wrong key, Ctrl-C) leaves no partial output file behind. Secrets are created with mode 0600 from the
first byte (the mode is set on the temporary file before any data is written).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ._errors import TeeserveError

__all__ = ["OutputExists", "atomic_output", "write_file_atomic", "SECRET_MODE", "PUBLIC_MODE"]

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class OutputExists(TeeserveError):
    """The output file exists and overwriting was not asked for (``--force``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(f"{os.fspath(path)}: already exists (use --force to overwrite)")
        self.path = os.fspath(path)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, mode: int = PUBLIC_MODE, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """Yield a binary file object whose content replaces ``path`` only if the block succeeds.

    Raises:
        OutputExists: ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise OutputExists(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite and target.exists():
            raise OutputExists(target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_file_atomic(
    path: str | os.PathLike[str], data: bytes, *, mode: int = PUBLIC_MODE, overwrite: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (see :func:`atomic_output`)."""
    with atomic_output(path, mode=mode, overwrite=overwrite) as fh:
        fh.write(data)
