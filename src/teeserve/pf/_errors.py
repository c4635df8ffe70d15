"""Everything :mod:`teeserve.pf` raises when a file or a key is not what it should be.

Every message names the file at fault and never contains key bytes or plaintext::

    TeeserveError
    └── ProtectedFileError            anything from teeserve.pf
        ├── NotProtectedFile          no GRAFS_PF magic (not a protected file, or an old GRAPH_PF one)
        ├── TruncatedFile             size not a multiple of 4096, or fewer nodes than needed
        ├── UnsupportedVersion        major version other than 1 or 2, or unknown v2 feature flags
        ├── RecoveryPending           v2 file with the "pending write" flag (0x01) set (spec §1.12)
        ├── WrongKeyOrCorruptMetadata AES-GCM failure on node 0: wrong wrap key *or* tampered header
        ├── TamperedNode              an MHT or data node failed authentication against its parent
        ├── PathMismatch              the bound path differs from the expected one (spec §1.10)
        ├── PathTooLong               a bound path longer than 771 bytes (or empty, or with a NUL)
        ├── SourceChanged             the input file changed size while it was being encrypted
        └── WrapKeyError              a wrap-key file that is neither 16 raw bytes nor 32 hex characters

A wrong key and a tampered metadata node are the same event to AES-GCM, so one class covers both
and says so. Programming mistakes (a key of the wrong type or length passed to the library) raise
``TypeError``/``ValueError`` as the standard library does.
"""

from __future__ import annotations

from .._errors import TeeserveError

__all__ = [
    "ProtectedFileError",
    "NotProtectedFile",
    "TruncatedFile",
    "UnsupportedVersion",
    "RecoveryPending",
    "WrongKeyOrCorruptMetadata",
    "TamperedNode",
    "PathMismatch",
    "PathTooLong",
    "SourceChanged",
    "WrapKeyError",
]


class ProtectedFileError(TeeserveError):
    """Root of the protected-files tree. ``source`` names the file (or ``<bytes>``)."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source


class NotProtectedFile(ProtectedFileError):
    """The file does not start with the ``GRAFS_PF`` magic."""


class TruncatedFile(ProtectedFileError):
    """The host file is not a whole number of nodes, or lacks nodes its size field needs."""


class UnsupportedVersion(ProtectedFileError):
    """A format major version (or v2 feature flag) this reader does not understand."""


class RecoveryPending(ProtectedFileError):
    """A v2 file whose last flush did not finish; Gramine needs its recovery file first."""


class WrongKeyOrCorruptMetadata(ProtectedFileError):
    """The metadata node did not authenticate: a wrong wrap key or a tampered node 0."""

    def __init__(self, source: str) -> None:
        super().__init__(
            source,
            "the metadata node (physical node 0) failed authentication: either the wrap key is wrong "
            "or the file header was corrupted or tampered with (AES-GCM cannot tell the two apart)",
        )


class TamperedNode(ProtectedFileError):
    """A node's AES-GCM tag did not match the one recorded in its (verified) parent.

    ``node_number`` is the physical node (host offset ``node_number * 4096``); ``kind`` is
    ``"data"`` or ``"MHT"``; ``logical`` is the data-node or MHT-node index.
    """

    def __init__(self, source: str, node_number: int, kind: str, logical: int) -> None:
        super().__init__(
            source,
            f"physical node {node_number} ({kind} node #{logical}, host offset {node_number * 4096}) "
            "failed authentication: the file is corrupted or was tampered with",
        )
        self.node_number = node_number
        self.kind = kind
        self.logical = logical


class PathMismatch(ProtectedFileError):
    """The path bound into the file is not the expected one (Gramine would refuse to open it)."""

    def __init__(self, source: str, stored: str, expected: str) -> None:
        super().__init__(
            source,
            f"the file is bound to path {stored!r} but {expected!r} was expected "
            "(Gramine compares the normalized host path byte for byte)",
        )
        self.stored = stored
        self.expected = expected


class PathTooLong(ProtectedFileError):
    """A path that cannot be bound into a protected file."""


class SourceChanged(ProtectedFileError):
    """The plaintext input changed size while it was being encrypted."""


class WrapKeyError(ProtectedFileError):
    """A wrap-key file in neither accepted form (16 raw bytes, or 32 hex characters)."""
