"""Wrap keys: the 16-byte AES key (KDK) from which every protected file's metadata key is derived.

Two on-disk forms are accepted (spec §1.7): Gramine pf-crypt's wrap-key file (exactly 16 raw bytes)
and the manifest form of ``fs.insecure__keys.<name>`` (32 hex characters, optionally followed by a
newline). Errors say what was found (a length, a kind) and never echo key bytes.
"""

from __future__ import annotations

import os
import secrets
import string

from .._io import SECRET_MODE, write_file_atomic
from ._errors import WrapKeyError
from ._format import KEY_SIZE

__all__ = ["WRAP_KEY_SIZE", "new_wrap_key", "parse_wrap_key", "load_wrap_key", "write_wrap_key", "check_key"]

WRAP_KEY_SIZE = KEY_SIZE
_HEX = frozenset(string.hexdigits.encode())


def new_wrap_key() -> bytes:
    """16 fresh bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(WRAP_KEY_SIZE)


def check_key(key: object) -> bytes:
    """The library-level check of a key argument: ``TypeError``/``ValueError`` for misuse."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a wrap key must be bytes, not {type(key).__name__}")
    if len(key) != WRAP_KEY_SIZE:
        raise ValueError(f"a wrap key is {WRAP_KEY_SIZE} bytes (AES-128), not {len(key)}")
    return bytes(key)


def parse_wrap_key(data: bytes, source: str) -> bytes:
    """The 16-byte key held in ``data`` (raw 16 bytes, or 32 hex characters + optional newline).

    Raises:
        WrapKeyError: anything else; the message names ``source`` and what was found.
    """
    if len(data) == WRAP_KEY_SIZE:
        return bytes(data)
    text = data
    if text.endswith(b"\r\n"):
        text = text[:-2]
    elif text.endswith(b"\n"):
        text = text[:-1]
    if len(text) == 2 * WRAP_KEY_SIZE and all(c in _HEX for c in text):
        return bytes.fromhex(text.decode("ascii"))
    if text and all(c in _HEX for c in text):
        found = f"{len(text)} hex characters"
    elif len(text.strip()) != len(text) and all(c in _HEX for c in text.strip()):
        found = "hex characters surrounded by extra whitespace"
    else:
        found = f"{len(data)} bytes that are not a hex string"
    raise WrapKeyError(
        source,
        f"not a wrap key: expected exactly {WRAP_KEY_SIZE} raw bytes (pf-crypt key file) or "
        f"{2 * WRAP_KEY_SIZE} hex characters with an optional trailing newline (manifest form), "
        f"found {found}",
    )


def load_wrap_key(path: str | os.PathLike[str]) -> bytes:
    """Read and parse a wrap-key file (see :func:`parse_wrap_key`).

    Raises:
        WrapKeyError: unreadable file or neither accepted form.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 * WRAP_KEY_SIZE + 1)  # enough to tell; a huge file is not a key
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise WrapKeyError(source, f"cannot read the wrap key: {exc.strerror or exc}") from exc
    if len(data) > 4 * WRAP_KEY_SIZE:  # only the start was read: say what the file is, not the sample
        found = str(size) if size >= len(data) else f"more than {4 * WRAP_KEY_SIZE}"  # (st_size 0: a device)
        raise WrapKeyError(source, f"not a wrap key: expected exactly {WRAP_KEY_SIZE} raw bytes or "
                                   f"{2 * WRAP_KEY_SIZE} hex characters, found a file of {found} bytes")
    return parse_wrap_key(data, source)


def write_wrap_key(
    path: str | os.PathLike[str], key: bytes, *, force: bool = False, hex: bool = False
) -> None:
    """Write ``key`` atomically with mode 0600: 16 raw bytes, or (``hex=True``) 32 hex chars + newline.

    Raises:
        teeserve._io.OutputExists: ``path`` exists and ``force`` is false.
    """
    key = check_key(key)
    data = (key.hex() + "\n").encode("ascii") if hex else key
    write_file_atomic(path, data, mode=SECRET_MODE, overwrite=force)
