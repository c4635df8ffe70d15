"""Errors of the evidence providers (the attester side: getting a quote out of the TEE).

Tree::

    TeeserveError
    └── EvidenceError                 any failure to obtain evidence
        ├── EvidenceUnavailable       the TEE interface is missing (not in Gramine, no configfs-tsm)
        ├── WrongAttestationType      unexpected attestation_type or configfs-tsm provider
        ├── EvidenceIOError           a read or write on the TEE interface failed or came back short
        └── ConcurrentReportError     configfs-tsm generation kept changing (another writer)
"""

from __future__ import annotations

from ..._errors import TeeserveError

__all__ = [
    "EvidenceError",
    "EvidenceUnavailable",
    "WrongAttestationType",
    "EvidenceIOError",
    "ConcurrentReportError",
]


class EvidenceError(TeeserveError):
    """The TEE could not produce a quote."""


class EvidenceUnavailable(EvidenceError):
    """The TEE interface (a pseudo-file tree) does not exist on this host."""


class WrongAttestationType(EvidenceError):
    """The TEE interface reports an attestation type or provider we do not accept."""


class EvidenceIOError(EvidenceError):
    """Reading or writing a TEE pseudo-file failed, or a write/read came back short or empty."""


class ConcurrentReportError(EvidenceError):
    """configfs-tsm: the report generation changed under us on every attempt."""
