"""Printing results whose text holds file names, on any stdout.

A Linux file name is bytes; Python hands an undecodable one (byte 0xff, a Latin-1 name) to us as a
``str`` with surrogates (``os.fsdecode``). A stdout that accepts them (a UTF-8 or C locale, which use
``surrogateescape``) gets the name's own bytes back, so scripts reading the output see the real name.
A strict stdout (``PYTHONIOENCODING=utf-8:strict``, a non-UTF-8 locale) cannot encode them and would
raise after the work is done; there the undecodable bytes are printed as ``\\xNN`` escapes instead.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["echo", "escaped"]


def escaped(text: str, encoding: str) -> str:
    """``text`` as ``encoding`` can carry it: bytes of file names it cannot decode become ``\\xNN``
    (``b"f\\xff"`` prints as ``f\\xff``), other unencodable characters ``\\uNNNN``."""
    try:
        raw = text.encode(sys.getfilesystemencoding(), "surrogateescape")  # the names' own bytes
        shown = raw.decode(encoding, "backslashreplace")
        shown.encode(encoding)
        return shown
    except (UnicodeError, LookupError):  # a lone surrogate not from a file name, or an odd codec
        return text.encode("ascii", "backslashreplace").decode("ascii")


def echo(line: str, file: TextIO | None = None) -> None:
    """Print ``line`` to ``file`` (stdout): as it is where the stream can encode it, escaped where not.

    A text stream encodes a whole ``write`` before passing it on, so a refused line leaves nothing
    half-printed before its escaped form."""
    stream = sys.stdout if file is None else file
    try:
        stream.write(line + "\n")
    except UnicodeEncodeError:
        stream.write(escaped(line, getattr(stream, "encoding", None) or "utf-8") + "\n")
