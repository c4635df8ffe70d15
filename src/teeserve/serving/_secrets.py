"""Wrap keys held in memory, and reading model files that may be Gramine protected files.

Strategy: a :class:`KeyRing` maps key names (Gramine's ``key_name``; ``default`` unless configured
otherwise) to 16-byte wrap keys. It lives only in process memory: never logged, never in an error
message or a ``repr``. The key-broker issue fills it after remote attestation; for now the server
fills it from a key file (:meth:`KeyRing.load_key_file`).

:class:`ModelFiles` reads the files of one version directory. A file that starts with the protected
files magic is decrypted in memory; anything else is read as plaintext (unless ``require_encrypted``).
Path binding (Gramine's anti-swap check, gramine-formats.md §1.10): every protected file carries the
normalized *host* path it was encrypted for, and it is accepted only if that equals the normalized
path the server opened it by. When the files were encrypted for another location (e.g. ``-o
models/m/1/saved_model.pb`` but served from ``/models/m``), a ``path_map`` of ``(served prefix, bound
prefix)`` pairs rewrites the opened path first: with ``("/models", "models")`` the file opened as
``/models/m/1/saved_model.pb`` must be bound to ``models/m/1/saved_model.pb``. Nothing decrypted is
ever written to disk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._errors import TeeserveError

__all__ = ["KeyRing", "KeyNotAvailable", "ModelFiles", "FileReadError", "map_host_path", "DEFAULT_KEY_NAME"]

DEFAULT_KEY_NAME = "default"
WRAP_KEY_SIZE = 16


class KeyNotAvailable(TeeserveError):
    """A protected file needs a key the server does not hold (yet)."""


class FileReadError(TeeserveError):
    """A model file could not be read or decrypted; the message names the file and the cause.

    ``permanent`` is True when retrying cannot help (authentication failures, wrong key, path
    mismatch): the manager does not retry such loads.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class KeyRing:
    """Named 16-byte wrap keys, in memory only. Thread-safe."""

    def __init__(self, keys: dict[str, bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()
        for name, key in (keys or {}).items():
            self.set(name, key)

    def set(self, name: str, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("a wrap key must be bytes")
        if len(key) != WRAP_KEY_SIZE:
            raise ValueError(f"a wrap key is {WRAP_KEY_SIZE} bytes, got {len(key)}")
        if not name:
            raise ValueError("a key needs a name")
        with self._lock:
            self._keys[name] = bytes(key)

    def get(self, name: str = DEFAULT_KEY_NAME) -> bytes:
        with self._lock:
            key = self._keys.get(name)
        if key is None:
            raise KeyNotAvailable(f"no wrap key named {name!r} has been provisioned")
        return key

    def has(self, name: str = DEFAULT_KEY_NAME) -> bool:
        with self._lock:
            return name in self._keys

    def remove(self, name: str) -> None:
        with self._lock:
            self._keys.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._keys)

    def load_key_file(self, path: str | os.PathLike[str], name: str = DEFAULT_KEY_NAME) -> None:
        """Read a wrap-key file (16 raw bytes or 32 hex characters) into the ring under ``name``."""
        from .. import pf

        self.set(name, pf.load_wrap_key(path))

    def __repr__(self) -> str:
        return f"KeyRing(names={self.names()})"

    # -- decryption helpers -------------------------------------------------------------------

    def decrypt_file(self, path: str | os.PathLike[str], *, key_name: str = DEFAULT_KEY_NAME,
                     path_map: Sequence[tuple[str, str]] = ()) -> bytes:
        """Decrypt one protected file into memory, checking its bound path (see the module doc)."""
        return ModelFiles(Path(path).parent, self, key_name=key_name, path_map=path_map).read(Path(path).name)

    def read_maybe_protected(self, path: str | os.PathLike[str], *, key_name: str = DEFAULT_KEY_NAME,
                             path_map: Sequence[tuple[str, str]] = ()) -> tuple[bytes, bool]:
        """(contents, was_protected) of a file that may or may not be a protected file."""
        files = ModelFiles(Path(path).parent, self, key_name=key_name, path_map=path_map)
        name = Path(path).name
        return files.read(name), files.is_protected(name)


def map_host_path(path: str, path_map: Iterable[tuple[str, str]]) -> str:
    """The normalized path a file opened as ``path`` must be bound to (first matching prefix wins)."""
    from .. import pf

    norm = pf.normalize_path(path)
    for served, bound in path_map:
        s = pf.normalize_path(served)
        if norm == s or norm.startswith(s.rstrip("/") + "/"):
            rest = norm[len(s):].lstrip("/")
            b = pf.normalize_path(bound)
            return pf.normalize_path(f"{b}/{rest}") if rest else b
    return norm


class ModelFiles:
    """Read-only access to the files under one version directory, decrypting protected files.

    ``root`` is the directory as the server names it (relative or absolute, exactly as configured):
    the bound path of each file is checked against ``root/relpath``, normalized and mapped.
    """

    def __init__(self, root: str | os.PathLike[str], keyring: KeyRing, *, key_name: str = DEFAULT_KEY_NAME,
                 path_map: Sequence[tuple[str, str]] = (), require_encrypted: bool = False) -> None:
        self.root = os.fspath(root)
        self.keyring = keyring
        self.key_name = key_name
        self.path_map = tuple(path_map)
        self.require_encrypted = require_encrypted
        self._protected: dict[str, bool] = {}

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return os.path.isfile(self.path(rel))

    def walk(self) -> list[str]:
        """Every regular file under the root, as relative POSIX paths, sorted."""
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                out.append(os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/"))
        return sorted(out)

    def is_protected(self, rel: str) -> bool:
        cached = self._protected.get(rel)
        if cached is None:
            from .. import pf

            try:
                with open(self.path(rel), "rb") as f:
                    cached = bool(pf.is_protected_file(f))
            except OSError as exc:
                raise FileReadError(f"{self.path(rel)}: {exc.strerror or exc}", permanent=False) from exc
            self._protected[rel] = cached
        return cached

    def any_protected(self) -> bool:
        return any(self.is_protected(rel) for rel in self.walk())

    def read(self, rel: str) -> bytes:
        """The plaintext of ``rel``: decrypted in memory if it is a protected file."""
        from .. import pf

        path = self.path(rel)
        if not self.is_protected(rel):
            if self.require_encrypted:
                raise FileReadError(f"{path}: not a protected file, and only encrypted models are allowed",
                                    permanent=True)
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise FileReadError(f"{path}: {exc.strerror or exc}", permanent=False) from exc
        try:
            key = self.keyring.get(self.key_name)
        except KeyNotAvailable as exc:
            raise FileReadError(f"{path}: {exc}", permanent=False) from exc
        expected = map_host_path(path, self.path_map)
        try:
            with open(path, "rb") as f, pf.open_reader(f, key, expected_path=expected) as reader:
                return reader.read_all()
        except pf.ProtectedFileError as exc:
            # str(exc) names the file (as source) and the failure, never key bytes. A truncated file
            # may still be being copied in: worth a retry; an authentication failure is not.
            raise FileReadError(f"{path}: cannot decrypt protected file: {type(exc).__name__}: {exc}",
                                permanent=not isinstance(exc, pf.TruncatedFile)) from exc
        except OSError as exc:
            raise FileReadError(f"{path}: {exc.strerror or exc}", permanent=False) from exc
