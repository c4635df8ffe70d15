"""Small file helpers shared by every writer: atomic output and private files.

Strategy: nothing is ever written in place. Output goes to a hidden temporary file in the destination
folder, is flushed and fsynced, then renamed over the target, so a failure at any point (bad input,
wrong key, Ctrl-C) leaves no partial output file behind. Secrets are created with mode 0600 from the
first byte (the mode is set on the temporary file before any data is written).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ._errors import TeeserveError

__all__ = ["OutputExists", "OutputNotRegular", "Staging", "atomic_output", "write_file_atomic", "SECRET_MODE",
           "PUBLIC_MODE"]

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class OutputExists(TeeserveError):
    """The output file exists and overwriting was not asked for (``--force``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(f"{os.fspath(path)}: already exists (use --force to overwrite)")
        self.path = os.fspath(path)


class OutputNotRegular(TeeserveError):
    """The output path is a directory, a symbolic link, a device or a pipe: never replaced, even with
    ``--force`` (renaming a file over ``/dev/stdout`` or a link would clobber it, not write through it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(f"{os.fspath(path)}: exists and is not a regular file (a directory, link, device or "
                         "pipe); teeserve writes regular files only")
        self.path = os.fspath(path)


def _check_target(target: Path, overwrite: bool) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise OutputNotRegular(target)
    if not overwrite:
        raise OutputExists(target)


class Staging:
    """Outputs written now and put in place together by :meth:`commit`, or not at all (:meth:`discard`):
    for a set of files that must replace their targets all or nothing (a tree of protected files)."""

    def __init__(self) -> None:
        self._files: list[tuple[str, Path, bool]] = []  # (temporary file, target, overwrite)

    def commit(self) -> None:
        """Put every staged file in place, or none: each existing target is first renamed aside, and if
        any rename fails (a target that became a directory after the check, a staged file removed) the
        files already placed are taken out and the old ones renamed back before the error is raised.

        Raises:
            OSError naming the target that could not be replaced; OutputExists, OutputNotRegular.
        """
        for _tmp, target, overwrite in self._files:  # nothing is replaced unless every target still may be
            _check_target(target, overwrite)
        done: list[tuple[Path, str | None, bool]] = []  # (target, its old file's hidden name, new one placed)
        try:
            for tmp, target, _overwrite in self._files:
                try:
                    old = _move_aside(target)
                    done.append((target, old, False))
                    os.replace(tmp, target)
                    done[-1] = (target, old, True)
                except OSError as exc:  # name the target, not the temporary file
                    raise OSError(exc.errno, exc.strerror, os.fspath(target)) from exc
        except BaseException:
            _put_back(done)
            self.discard()
            raise
        for _target, old, _placed in done:  # the old files are superseded (a decrypt's may hold plaintext)
            if old is not None:
                with contextlib.suppress(OSError):
                    os.unlink(old)
        self._files.clear()

    def discard(self) -> None:
        for tmp, _target, _overwrite in self._files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._files.clear()


def _move_aside(target: Path) -> str | None:
    """Keep an existing ``target`` under a fresh hidden name beside it; None if there is no target.

    A hard link where the file system has them, so the target itself never goes missing (the new file
    replaces it atomically, as before); a rename otherwise."""
    if not os.path.lexists(target):
        return None
    fd, old = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
    os.close(fd)
    try:
        try:
            os.unlink(old)
            os.link(target, old, follow_symlinks=False)
        except OSError:
            os.replace(target, old)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(old)
        raise
    return old


def _put_back(done: list[tuple[Path, str | None, bool]]) -> None:
    """Undo a commit that failed part-way, last target first: each old file goes back (renamed over the
    new one, so the target never goes missing) and a new file without an old one is removed. An old file
    that cannot be put back stays under its hidden name rather than being lost."""
    for target, old, placed in reversed(done):
        with contextlib.suppress(OSError):
            if old is None:
                if placed:
                    os.unlink(target)
            elif placed or not os.path.lexists(target):
                os.replace(old, target)
            else:  # never replaced: the target is still the old file, and ``old`` a second link to it
                os.unlink(old)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, mode: int = PUBLIC_MODE, overwrite: bool = True,
    stage: Staging | None = None,
) -> Iterator[BinaryIO]:
    """Yield a binary file object whose content replaces ``path`` only if the block succeeds (with a
    ``stage``: only once the stage is committed).

    Raises:
        OutputExists: ``path`` exists and ``overwrite`` is false.
        OutputNotRegular: ``path`` exists and is not a regular file.
    """
    target = Path(path)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if stage is not None:
            stage._files.append((tmp, target, overwrite))
            return
        _check_target(target, overwrite)
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
