"""The recipes of :mod:`teeserve.pf`: whole files, byte strings and directory trees.

Strategy: every writer goes through ``_io.atomic_output`` (temporary file + rename), so a wrong
key, a tampered node or Ctrl-C never leaves a partial output file; decrypted output is created
0600 from its first byte. Paths are bound in Gramine's normalized form (§1.10).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .._io import PUBLIC_MODE, SECRET_MODE, OutputExists, Staging, atomic_output
from . import _tree
from ._errors import ProtectedFileError, SourceChanged
from ._file import Progress, Reader, write_protected
from ._format import FILE_ID, NODE_SIZE, encode_path
from ._keys import check_key
from ._paths import normalize_path

__all__ = [
    "open_reader",
    "decrypt_bytes",
    "encrypt_bytes",
    "encrypt_file",
    "decrypt_file",
    "encrypt_tree",
    "decrypt_tree",
    "is_protected_file",
]

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def _io_errors(src: PathLike, dst: PathLike) -> Iterator[None]:
    """Report an operating-system failure mid-way (disk full, I/O error) as one of ours, naming the
    path it concerns when that is not ``dst`` itself (``o/p: Not a directory`` says which ``p``)."""
    try:
        yield
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        where = exc.filename2 or exc.filename  # a rename's target, else the one path
        if where is not None and os.fsdecode(where) != os.fspath(dst):
            reason = f"{os.fsdecode(where)}: {reason}"
        raise ProtectedFileError(f"{os.fspath(src)} -> {os.fspath(dst)}", f"failed: {reason}") from exc


def _check_paths(**paths: PathLike) -> None:
    """An empty path is a mistake (an unset variable), not a name: as a tree's output it bound every
    file to ``/relpath`` and wrote into the current directory; as its input it read the current one."""
    for name, path in paths.items():
        if not os.fspath(path):
            raise ValueError(f"{name} must not be empty")


def _check_version(format_version: int) -> int:
    if format_version not in (1, 2):
        raise ValueError(f"format_version must be 1 or 2, not {format_version!r}")
    return format_version


def _open_input(path: PathLike) -> BinaryIO:
    try:
        # stat first: opening a FIFO would wait for a writer, and a pipe cannot be read at offsets
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ProtectedFileError(os.fspath(path), "is not a regular file")
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise ProtectedFileError(os.fspath(path), f"cannot read: {exc.strerror or exc}") from exc


def open_reader(
    file: PathLike | BinaryIO, key: bytes, *, expected_path: str | None = None
) -> Reader:
    """Open a protected file for verified reading (a path, or a seekable binary file object).

    ``expected_path``, if given, must equal the bound path byte for byte, as Gramine checks it: pass
    the *normalized* host path (see :func:`normalize_path`).

    Raises:
        NotProtectedFile, TruncatedFile, UnsupportedVersion, RecoveryPending,
        WrongKeyOrCorruptMetadata, TamperedNode (root MHT), PathMismatch; ProtectedFileError if the
        file cannot be read. Later ``read`` calls raise TamperedNode / TruncatedFile.
    """
    key = check_key(key)
    if isinstance(file, (str, os.PathLike)):
        return Reader(_open_input(file), key, source=os.fspath(file), expected_path=expected_path, owns=True)
    source = str(getattr(file, "name", None) or "<file object>")
    return Reader(file, key, source=source, expected_path=expected_path)


def decrypt_bytes(blob: bytes, key: bytes, *, expected_path: str | None = None) -> bytes:
    """The verified plaintext of a protected file held in memory (see :func:`open_reader`)."""
    with Reader(io.BytesIO(blob), check_key(key), source="<bytes>", expected_path=expected_path) as r:
        return r.read_all()


def encrypt_bytes(plaintext: bytes, key: bytes, bound_path: str, *, format_version: int = 1) -> bytes:
    """A protected file holding ``plaintext``, bound to ``normalize_path(bound_path)``.

    Raises:
        PathTooLong: the normalized path is empty, has a NUL or is longer than 771 bytes.
    """
    key = check_key(key)
    raw = encode_path(normalize_path(bound_path), "<bytes>")
    out = io.BytesIO()
    out.seek(_tree.host_size(len(plaintext)) - 1)  # size the buffer once; getvalue() then hands it over
    out.write(b"\0")
    write_protected(
        io.BytesIO(plaintext), len(plaintext), out, key, raw, version=_check_version(format_version)
    )
    return out.getvalue()


def encrypt_file(
    src: PathLike,
    dst: PathLike,
    key: bytes,
    *,
    bound_path: str | None = None,
    format_version: int = 1,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> str:
    """Encrypt file ``src`` to ``dst``; returns the bound path (default: ``normalize_path(dst)``).

    Streams node by node in constant memory. ``progress(n)`` is called with plaintext bytes done.
    A failure leaves neither ``dst`` nor the directories made for it.

    Raises:
        PathTooLong, SourceChanged, ProtectedFileError (unreadable input, or a ``dst`` such as ``.``
        that names a directory), OutputExists; ValueError for an empty ``src`` or ``dst``.
    """
    key = check_key(key)
    _check_version(format_version)
    _check_paths(src=src, dst=dst)
    return _encrypt_one(src, dst, key, bound_path, format_version, overwrite, progress, None)


def _encrypt_one(src: PathLike, dst: PathLike, key: bytes, bound_path: str | None, format_version: int,
                 overwrite: bool, progress: Progress | None, stage: Staging | None) -> str:
    bound = normalize_path(os.fspath(dst) if bound_path is None else bound_path)
    if bound_path is None and not bound:  # ".", "a/..": no file name to write or to bind
        raise ProtectedFileError(os.fspath(dst), "names a directory (the current one), not the file to "
                                 "write; give the protected file's path")
    raw = encode_path(bound, os.fspath(dst))
    source = os.fspath(src)
    with _open_input(src) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ProtectedFileError(source, "is not a regular file")
        with (_io_errors(src, dst), contextlib.nullcontext() if stage is not None else _output_dirs(dst),
              atomic_output(dst, mode=PUBLIC_MODE, overwrite=overwrite, stage=stage) as out):
            write_protected(
                fh, st.st_size, out, key, raw, version=format_version, progress=progress, source=source
            )
            if os.fstat(fh.fileno()).st_size != st.st_size:
                raise SourceChanged(source, "the input file changed size while it was being encrypted")
    return bound


def decrypt_file(
    src: PathLike,
    dst: PathLike,
    key: bytes,
    *,
    expected_path: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> None:
    """Decrypt protected file ``src`` to ``dst`` (mode 0600), verifying every node first.

    ``dst`` appears only if the whole file authenticated, and so do the directories made for it.
    Raises what :func:`open_reader` and ``Reader.read`` raise, OutputExists, and ValueError for an
    empty ``src`` or ``dst``.
    """
    _check_paths(src=src, dst=dst)
    with open_reader(src, key, expected_path=expected_path) as reader:
        with (_io_errors(src, dst), _output_dirs(dst),
              atomic_output(dst, mode=SECRET_MODE, overwrite=overwrite) as out):
            reader.copy_to(out, progress)


def _walk(root: Path) -> Iterator[tuple[Path, bool]]:
    """(relative path, is_dir) of everything under ``root``, sorted.

    A link to a file is read through (one file's bytes, as ``cp`` copies it); a link to a directory is
    refused, not followed: it can lead outside the tree or loop, and ``os.walk`` would otherwise skip
    its contents silently. A directory that cannot be listed is an error, not skipped (``os.walk``'s
    default): a tree run that silently left a model's files out would ship a model that fails only
    when it is served."""

    def unreadable(exc: OSError) -> None:
        raise ProtectedFileError(os.fspath(exc.filename or root), f"cannot list: {exc.strerror or exc}") from exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise ProtectedFileError(
                    os.fspath(here / name), "is a symbolic link to a directory, which a tree run does not "
                    "follow (it may lead outside the tree); replace it with the directory itself (cp -rL)")
            yield (here / name).relative_to(root), True
        for name in sorted(filenames):
            yield (here / name).relative_to(root), False


def _tree_plan(src_dir: PathLike, dst_dir: PathLike, overwrite: bool) -> tuple[list[Path], list[Path]]:
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise ProtectedFileError(os.fspath(src), "is not a directory")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ProtectedFileError(os.fspath(dst), f"the output directory must not be inside {src}")
    dirs, files = [], []
    for rel, is_dir in _walk(src):
        (dirs if is_dir else files).append(rel)
    files.sort()
    if not overwrite:
        for rel in files:
            if (dst / rel).exists():
                raise OutputExists(dst / rel)
    return dirs, files


def _make_dirs(path: Path, made: list[Path]) -> None:
    """``mkdir -p path``, appending each directory it creates to ``made`` (parents first) as soon as
    it exists. What counts is which ``mkdir`` succeeded, not which names were missing beforehand: a
    path through ``..`` or a link (``gone/../kept/out``) names directories that already exist, and
    an undo must never remove those."""
    pending, retried = [path], set[Path]()
    while pending:
        here = pending[-1]
        try:
            os.mkdir(here)
        except FileNotFoundError:
            if here in retried or here.parent == here:  # its parent exists now, or cannot be made
                raise
            retried.add(here)
            pending.append(here.parent)
            continue
        except FileExistsError:
            if not here.is_dir():  # a file in the way: say so, as opening a path through it would
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(here)) from None
        else:
            made.append(here)
        pending.pop()


def _remove_dirs(made: list[Path]) -> None:
    """Remove the directories a failed run made, deepest first; one that is not empty (something
    else was put there meanwhile) is kept, and so are its parents."""
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()
    made.clear()


@contextlib.contextmanager
def _output_dirs(dst: PathLike) -> Iterator[None]:
    """The missing parent directories of one output file: made here, and removed again if the
    output fails, so a failed run into ``new/nested/file`` leaves no ``new/`` behind."""
    made: list[Path] = []
    try:
        _make_dirs(Path(dst).parent, made)
        yield
    except BaseException:
        _remove_dirs(made)
        raise


class _TreeOutput:
    """A tree operation's output, all or nothing: its files are staged (:class:`teeserve._io.Staging`)
    and put in place by :meth:`commit` once every one is written; :meth:`undo` drops them and removes the
    directories the operation created (only those: see :func:`_make_dirs`)."""

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst = src, dst
        self.stage = Staging()
        self.created_dirs: list[Path] = []

    def make_dirs(self, dirs: list[Path]) -> None:
        with _io_errors(self.src, self.dst):
            for path in [self.dst, *(self.dst / rel for rel in dirs)]:
                _make_dirs(path, self.created_dirs)

    def commit(self) -> None:
        with _io_errors(self.src, self.dst):
            self.stage.commit()

    def undo(self) -> None:
        self.stage.discard()
        _remove_dirs(self.created_dirs)


def encrypt_tree(
    src_dir: PathLike,
    dst_dir: PathLike,
    key: bytes,
    *,
    host_prefix: str | None = None,
    format_version: int = 1,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[tuple[str, str]]:
    """Encrypt every file under ``src_dir`` into the same layout under ``dst_dir``.

    Each file is bound to ``normalize_path(PREFIX/relpath)`` where PREFIX is ``host_prefix`` or, by
    default, ``dst_dir`` as given; an empty ``host_prefix`` is a ``ValueError`` (it would bind to
    ``/relpath``), a relative one stays relative (Gramine binds relative mount uris as they are).
    All or nothing: on any failure the files and directories this call created are removed.
    Returns ``[(output file, bound path), ...]`` in sorted order.

    Raises:
        OutputExists (checked for every file before anything is written), PathTooLong,
        ProtectedFileError (also for a link to a directory inside ``src_dir``: refused, not followed),
        ValueError (an empty ``src_dir`` or ``dst_dir``), and what :func:`encrypt_file` raises.
    """
    key = check_key(key)
    _check_version(format_version)
    _check_paths(src_dir=src_dir, dst_dir=dst_dir)
    if host_prefix == "":
        raise ValueError("host_prefix must not be empty: it would bind every file to /relpath (give None "
                         "to bind to dst_dir)")
    dirs, files = _tree_plan(src_dir, dst_dir, overwrite)
    src, dst = Path(src_dir), Path(dst_dir)
    prefix = os.fspath(dst_dir) if host_prefix is None else host_prefix
    bounds = [normalize_path(f"{prefix}/{rel.as_posix()}") for rel in files]
    for rel, bound in zip(files, bounds):
        encode_path(bound, os.fspath(dst / rel))  # refuse before writing anything
    done = _TreeOutput(src, dst)
    result: list[tuple[str, str]] = []
    try:
        done.make_dirs(dirs)
        for rel, bound in zip(files, bounds):
            out = dst / rel
            _encrypt_one(src / rel, out, key, bound, format_version, overwrite, progress, done.stage)
            result.append((os.fspath(out), bound))
        done.commit()
    except BaseException:
        done.undo()
        raise
    return result


def decrypt_tree(
    src_dir: PathLike,
    dst_dir: PathLike,
    key: bytes,
    *,
    verify_paths: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[tuple[str, str]]:
    """Decrypt every protected file under ``src_dir`` into ``dst_dir`` (files 0600), all or nothing.

    With ``verify_paths`` each file's bound path must equal ``normalize_path(src_dir/relpath)``
    (like ``pf-crypt decrypt -V``). Returns ``[(output file, stored path), ...]``. Like
    :func:`encrypt_tree`, refuses an empty ``src_dir`` or ``dst_dir`` (ValueError) and a link to a
    directory inside ``src_dir``.
    """
    key = check_key(key)
    _check_paths(src_dir=src_dir, dst_dir=dst_dir)
    dirs, files = _tree_plan(src_dir, dst_dir, overwrite)
    src, dst = Path(src_dir), Path(dst_dir)
    done = _TreeOutput(src, dst)
    result: list[tuple[str, str]] = []
    try:
        done.make_dirs(dirs)
        for rel in files:
            out = dst / rel
            expected = normalize_path(f"{os.fspath(src_dir)}/{rel.as_posix()}") if verify_paths else None
            with open_reader(src / rel, key, expected_path=expected) as reader:
                with (
                    _io_errors(src / rel, out),
                    atomic_output(out, mode=SECRET_MODE, overwrite=overwrite, stage=done.stage) as fh,
                ):
                    reader.copy_to(fh, progress)
                stored = reader.stored_path
            result.append((os.fspath(out), stored))
        done.commit()
    except BaseException:
        done.undo()
        raise
    return result


def is_protected_file(obj: PathLike | BinaryIO | bytes | bytearray | memoryview) -> bool:
    """Cheap sniff (no key needed): ``GRAFS_PF`` magic and a whole, non-zero number of nodes. A path
    that is not a regular file (a FIFO, a device, a directory) is False without being opened."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = memoryview(obj)
        return len(data) >= NODE_SIZE and len(data) % NODE_SIZE == 0 and data[:8] == FILE_ID
    if isinstance(obj, (str, os.PathLike)):
        try:
            # stat first: opening a FIFO waits for a writer, and opening a device can act on it
            if not stat.S_ISREG(os.stat(obj).st_mode):
                return False
            fd = os.open(obj, os.O_RDONLY | os.O_NONBLOCK)  # does not wait if it became a FIFO since
            with open(fd, "rb") as fh:
                return stat.S_ISREG(os.fstat(fd).st_mode) and _sniff(fh)
        except OSError:
            return False
    return _sniff(obj)


def _sniff(fh: BinaryIO) -> bool:
    pos = fh.tell()
    try:
        fh.seek(0)
        magic = fh.read(len(FILE_ID))
        size = fh.seek(0, io.SEEK_END)
    finally:
        fh.seek(pos)
    return size >= NODE_SIZE and size % NODE_SIZE == 0 and magic == FILE_ID
