"""Errors of RA-TLS certificate creation and verification (gramine-formats.md §3).

Tree::

    TeeserveError
    └── RaTlsError                      the certificate cannot serve as RA-TLS evidence
        ├── MalformedCertificate        not a parseable X.509 certificate, duplicate/critical extensions
        ├── MissingEvidence             neither the DICE nor the legacy quote extension is present
        ├── UnsupportedKeyType          key is not EC P-384, EC P-256 or RSA-3072
        ├── MalformedEvidence           extension value malformed (CBOR shape, tag, sizes, short quote)
        │   └── MissingPubkeyHash       DICE claims without "pubkey-hash" (teeserve requires it)
        └── KeyBindingMismatch          report data does not commit to this certificate's key (legacy)
                                        or to these claims (DICE), or pubkey-hash ≠ hash(SPKI)

Verifying the quote itself (signature, TCB, policy) is not done here; the caller hands
``RaTlsEvidence.quote`` to ``teeserve.attest``.
"""

from __future__ import annotations

from ..._errors import TeeserveError

__all__ = [
    "RaTlsError",
    "MalformedCertificate",
    "MissingEvidence",
    "UnsupportedKeyType",
    "MalformedEvidence",
    "MissingPubkeyHash",
    "KeyBindingMismatch",
]


class RaTlsError(TeeserveError):
    """An RA-TLS certificate failed a check; the message names the check."""


class MalformedCertificate(RaTlsError):
    """Not a parseable X.509 certificate, or its extensions are unusable."""


class MissingEvidence(RaTlsError):
    """No RA-TLS quote extension (neither TCG DICE nor legacy)."""


class UnsupportedKeyType(RaTlsError):
    """The certificate key is not one RA-TLS allows (EC P-384, EC P-256, RSA-3072)."""


class MalformedEvidence(RaTlsError):
    """An evidence extension is present but does not have the shape the spec requires."""


class MissingPubkeyHash(MalformedEvidence):
    """The DICE claims carry no ``pubkey-hash`` claim, so nothing binds the quote to the key."""


class KeyBindingMismatch(RaTlsError):
    """The quote's report data does not commit to this certificate's public key."""
