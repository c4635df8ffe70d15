"""RA-TLS certificates in Gramine's profile: make them inside the TEE, check their key binding outside.

- :func:`make_certificate` (attester): fresh key, quote(s) from an evidence provider, self-signed
  certificate with the legacy quote extension and/or the TCG DICE tagged-evidence extension.
- :func:`verify_certificate` (verifier): which quote is bound to the certificate's key; the caller then
  verifies that quote (``teeserve.attest.verify_evidence``) and applies its policy.
- :func:`extract_quote` (operator tools): the quote inside a certificate, unverified.
"""

from __future__ import annotations

from ._cert import (
    DEFAULT_NOT_AFTER,
    DEFAULT_NOT_BEFORE,
    DICE_EVIDENCE_OID,
    KEY_TYPES,
    LEGACY_QUOTE_OID,
    LEGACY_QUOTE_OID_INTENDED,
    RaTlsCredentials,
    RaTlsEvidence,
    extract_quote,
    key_binding_report_data,
    make_certificate,
    parse_timestamp,
    validity_from_env,
    verify_certificate,
)
from ._errors import (
    KeyBindingMismatch,
    MalformedCertificate,
    MalformedEvidence,
    MissingEvidence,
    MissingPubkeyHash,
    RaTlsError,
    UnsupportedKeyType,
)

__all__ = [
    "DEFAULT_NOT_AFTER",
    "DEFAULT_NOT_BEFORE",
    "DICE_EVIDENCE_OID",
    "KEY_TYPES",
    "LEGACY_QUOTE_OID",
    "LEGACY_QUOTE_OID_INTENDED",
    "KeyBindingMismatch",
    "MalformedCertificate",
    "MalformedEvidence",
    "MissingEvidence",
    "MissingPubkeyHash",
    "RaTlsCredentials",
    "RaTlsError",
    "RaTlsEvidence",
    "UnsupportedKeyType",
    "extract_quote",
    "key_binding_report_data",
    "make_certificate",
    "parse_timestamp",
    "validity_from_env",
    "verify_certificate",
]
