"""The exceptions of :mod:`teeserve.tlsmaterial`.

::

    TeeserveError
     └── TlsMaterialError              anything wrong with TLS material
          ├── CertificateOptionsError   a name, address, key type or validity that cannot be
          │                             issued (exit 2)
          ├── MaterialExists            output files exist and --force was not given
          │                             (also a teeserve._io.OutputExists)
          └── SSLConfigError            an ssl.cfg that is malformed or inconsistent; names its source

Messages name the option, field or file at fault and never contain key material: parse errors from
protobuf echo the offending line, which may be a line of a private key, so :class:`SSLConfigError`
messages are rebuilt from the error's position and kind only.
"""

from __future__ import annotations

import os

from .._errors import TeeserveError
from .._io import OutputExists

__all__ = ["TlsMaterialError", "CertificateOptionsError", "MaterialExists", "SSLConfigError"]


class TlsMaterialError(TeeserveError):
    """Base class of every error raised by :mod:`teeserve.tlsmaterial`."""


class CertificateOptionsError(TlsMaterialError):
    """A subject name, SAN, key type or validity period that cannot be put in a certificate."""

    exit_code = 2


class MaterialExists(TlsMaterialError, OutputExists):
    """Some of the files :func:`make_tls_material` would write already exist and ``force`` is false."""

    def __init__(self, out_dir: str | os.PathLike[str], existing: list[str]) -> None:
        OutputExists.__init__(self, out_dir)
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        self.args = (
            f"{os.fspath(out_dir)}: already holds TLS material ({shown}); use --force to replace it",
        )
        self.existing = list(existing)


class SSLConfigError(TlsMaterialError):
    """An ``ssl.cfg`` (TensorFlow Serving ``SSLConfig`` text format) that cannot be used.

    ``source`` names the file (or other origin) the text came from; ``field`` is the SSLConfig field at
    fault when there is one.
    """

    exit_code = 2

    def __init__(self, source: str, problem: str, *, field: str | None = None) -> None:
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem
