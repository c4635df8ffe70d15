"""TensorFlow Serving's on-disk layout and all-or-nothing output.

Strategy: a model lives at ``<base>/<name>/<version>/`` (a SavedModel: ``saved_model.pb`` and
``variables/``; or ``model.onnx`` for the ONNX backend). Outputs are built in a hidden staging folder
next to their destination and renamed into place only when complete and verified, so a failure leaves
nothing behind and a polling server never sees a half-written version (hidden names are not numeric,
so TensorFlow Serving's version discovery ignores them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .._errors import UsageError
from .._io import OutputExists

__all__ = [
    "Outputs",
    "output_error",
    "all_or_nothing",
    "check_absent",
    "import_tensorflow",
    "install",
    "parent_dirs",
    "quiet_tensorflow",
    "staging_dir",
    "version_dir",
]


def version_dir(base: str | os.PathLike[str], version: int) -> Path:
    """``base/<version>`` after checking that ``version`` is a valid servable version number."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UsageError(f"model version must be a non-negative integer, not {version!r}")
    return Path(base) / str(version)


@contextlib.contextmanager
def staging_dir(near: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden temporary folder in ``near`` (created if needed), removed on exit whatever happens."""
    parent = Path(near)
    try:
        created = _mkdirs(parent)
        tmp = Path(tempfile.mkdtemp(prefix=".teeserve-staging-", dir=parent))
    except OSError as exc:
        raise UsageError(f"{parent}: cannot create an output folder here: {exc.strerror}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):  # only the folders we made and that stayed empty
            with contextlib.suppress(OSError):
                d.rmdir()


@contextlib.contextmanager
def parent_dirs(path: str | os.PathLike[str]) -> Iterator[None]:
    """Create the missing parents of ``path``; remove them again if the block fails."""
    created = _mkdirs(Path(path).parent)
    try:
        yield
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def check_absent(target: Path, force: bool) -> None:
    if not force and (target.exists() or target.is_symlink()):
        raise OutputExists(target)


def install(staged: Path, target: Path, *, force: bool) -> None:
    """Rename ``staged`` (file or folder) to ``target``; with ``force`` replace an existing one.

    The replacement is a rename of the old one aside, a rename of the new one in and a removal, so the
    target is never half-written.
    """
    check_absent(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


class Outputs:
    """Several outputs of one command, installed all or none (see :func:`all_or_nothing`).

    Each output is renamed into place as soon as it is ready; one that ``force`` replaces is renamed
    aside, not removed, until every output is in. Why: ``make-demo`` writes a SavedModel, its ONNX
    copy, sample images and a frozen graph, and a failure at the last of them (a full disk, a folder
    that cannot be written) must not leave the first ones behind, nor lose what ``--force`` was about
    to replace.
    """

    def __init__(self, force: bool) -> None:
        self.force = force
        # (target, the replaced one set aside or None, the parent folders made for it)
        self._done: list[tuple[Path, Path | None, list[Path]]] = []
        #: what a rollback or commit could not undo or tidy (paths named for the user)
        self.problems: list[str] = []

    def install(self, staged: Path, target: Path) -> None:
        """Rename ``staged`` (file or folder) to ``target``."""
        if any(target == done for done, _, _ in self._done):
            raise ValueError(f"{target} is already an output of this command")
        check_absent(target, self.force)
        created = _mkdirs(target.parent)
        old = None
        try:
            if target.exists() or target.is_symlink():
                old = _aside(target)
                os.replace(target, old)
            try:
                os.replace(staged, target)
            except BaseException:
                if old is not None:
                    try:
                        os.replace(old, target)
                    except OSError as exc:
                        self.problems.append(f"could not put {target} back ({exc.strerror}): it is kept as {old}")
                raise
        except BaseException:
            _rmdirs(created)
            raise
        self._done.append((target, old, created))

    def write(self, target: Path, data: bytes) -> None:
        """A regular file with ``data`` at ``target`` (written beside it under a hidden name, then
        renamed). A folder, link or device at ``target`` is refused, even with ``force``."""
        from .._io import OutputNotRegular, write_file_atomic

        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise OutputNotRegular(target)
        created = _mkdirs(target.parent)
        staged = _aside(target, "new")
        try:
            try:
                write_file_atomic(staged, data, overwrite=False)
            except OSError as exc:  # named after the target, not the hidden name
                raise OSError(exc.errno, exc.strerror, str(target)) from exc
            self.install(staged, target)
        except BaseException:
            with contextlib.suppress(OSError):  # (not there, or its folder is not one)
                staged.unlink()
            _rmdirs(created)
            raise
        self._done[-1][2][:0] = created  # removed with it on a rollback

    def _rollback(self) -> None:
        for target, old, created in reversed(self._done):
            try:
                _remove(target)
            except OSError as exc:
                self.problems.append(f"could not remove {target} ({exc.strerror})")
            if old is not None:
                try:
                    os.replace(old, target)
                except OSError as exc:
                    self.problems.append(f"could not put {target} back ({exc.strerror}): it is kept as {old}")
            _rmdirs(created)
        self._done.clear()

    def _commit(self) -> None:
        for _, old, _ in self._done:
            if old is not None:
                try:
                    _remove(old)
                except OSError as exc:
                    self.problems.append(f"could not remove the replaced copy {old} ({exc.strerror})")
        self._done.clear()


@contextlib.contextmanager
def all_or_nothing(force: bool, log: Callable[[str], None] | None = None) -> Iterator[Outputs]:
    """Install outputs with the yielded :class:`Outputs`; if the block fails, every one installed is
    removed again and every one replaced is put back. What could not be undone or tidied is passed
    to ``log`` (and added as a note to the exception)."""
    outputs = Outputs(force)
    try:
        yield outputs
    except BaseException as exc:
        outputs._rollback()
        for problem in outputs.problems:
            exc.add_note(problem)
            if log is not None:
                log(problem)
        raise
    outputs._commit()
    if log is not None:
        for problem in outputs.problems:
            log(problem)


def output_error(exc: OSError) -> UsageError:
    """The user's message for an output that could not be written inside :func:`all_or_nothing`."""
    where = exc.filename2 if exc.filename2 is not None else exc.filename
    place = f"{where}: " if where is not None else ""
    return UsageError(f"cannot write the outputs: {place}{exc.strerror or exc}; nothing was written "
                      "(outputs already in place were taken back)")


def _aside(target: Path, what: str = "old") -> Path:
    """A free hidden name beside ``target`` (``.NAME.old-<random>``): never a leftover of another run."""
    while True:
        path = target.with_name(f".{target.name}.{what}-{secrets.token_hex(4)}")
        if not (path.exists() or path.is_symlink()):
            return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _rmdirs(created: list[Path]) -> None:
    """Remove the folders :func:`_mkdirs` made (innermost first), those that are still empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


def _mkdirs(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; the folders made, outermost first (none left behind when
    one of them cannot be made)."""
    missing = []
    p = path.absolute()
    while not (p.exists() or p.is_symlink()):
        missing.append(p)
        p = p.parent
    missing.reverse()
    made: list[Path] = []
    try:
        for d in missing:
            d.mkdir()
            made.append(d)
    except BaseException:
        _rmdirs(made)
        raise
    return missing


_NOISY_LOGGERS = ("tensorflow", "tf2onnx", "absl", "h5py")


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Silence TensorFlow's and tf2onnx's deprecation chatter for the duration of a call.

    The conversion APIs used here (``tf.compat.v1`` graphs, the SavedModel builder) log pages of
    "Instructions for updating" that mean nothing to the model owner; real failures still raise.
    """
    saved = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def import_tensorflow():  # type: ignore[no-untyped-def]
    """Import TensorFlow with its C++ start-up banner turned down (unless the user set the level)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf
