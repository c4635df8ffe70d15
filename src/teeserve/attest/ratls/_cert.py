"""RA-TLS certificates in Gramine's profile (gramine-formats.md §3.1–§3.4, §3.8).

Strategy: creation follows §3.8 step by step (fresh key → quote over SHA-256(SPKI) → claims → second
quote over SHA-256(claims) → self-signed certificate), with the quotes coming from an
:class:`~teeserve.attest.evidence.EvidenceProvider`. Nothing touches the disk; the caller decides
where (if anywhere) the key goes.

Verification is §3.4 step 2 only: which quote is bound to this certificate's key, and through which
extension. Like Gramine, the certificate's own signature, chain and dates are not checked (possession
of the key is proven by the TLS handshake); unlike Gramine, a DICE extension without ``pubkey-hash``
is refused, because then nothing ties the quote to the key.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ._dice import decode_claims, decode_evidence, encode_claims, encode_evidence, pubkey_hash_of
from ._errors import (
    KeyBindingMismatch,
    MalformedCertificate,
    MalformedEvidence,
    MissingEvidence,
    MissingPubkeyHash,
    UnsupportedKeyType,
)
from ._quote import report_data_of

if TYPE_CHECKING:
    from ..evidence import EvidenceProvider

__all__ = [
    "LEGACY_QUOTE_OID",
    "LEGACY_QUOTE_OID_INTENDED",
    "DICE_EVIDENCE_OID",
    "KEY_TYPES",
    "DEFAULT_NOT_BEFORE",
    "DEFAULT_NOT_AFTER",
    "RaTlsCredentials",
    "RaTlsEvidence",
    "make_certificate",
    "extract_quote",
    "verify_certificate",
    "parse_timestamp",
    "validity_from_env",
    "key_binding_report_data",
]

#: What Gramine actually emits: the 11 content bytes ``06 09 2A 86 48 86 F8 4D 8A 39 06`` (§3.2).
LEGACY_QUOTE_OID = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
#: The OID Gramine meant; its verifier (substring search) accepts it too, and so do we.
LEGACY_QUOTE_OID_INTENDED = x509.ObjectIdentifier("1.2.840.113741.1337.6")
#: TCG DICE tagged evidence (§3.3).
DICE_EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")

KEY_TYPES: tuple[str, ...] = ("ec-p384", "ec-p256", "rsa-3072")
DEFAULT_NOT_BEFORE = _dt.datetime(2001, 1, 1, 0, 0, 0, tzinfo=_dt.timezone.utc)
DEFAULT_NOT_AFTER = _dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=_dt.timezone.utc)

# Gramine's verifier requires the extension OCTET STRING to carry a 2-byte long-form length
# (04 82 hh ll); in DER that means 256..65535 bytes, and Gramine caps it at 8192.
_EXT_MIN, _EXT_MAX = 256, 8192

_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ]
)


@dataclass(frozen=True, slots=True)
class RaTlsCredentials:
    """An RA-TLS certificate and its private key, in memory only."""

    cert_der: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    key_type: str


@dataclass(frozen=True, slots=True)
class RaTlsEvidence:
    """What :func:`verify_certificate` established: ``quote`` commits to the certificate's key.

    ``scheme`` is ``"dice"`` (TCG tagged evidence, Gramine ≥ 1.8) or ``"legacy"``. The quote itself is
    still unverified: hand it to ``teeserve.attest.verify_evidence``.
    """

    quote: bytes = field(repr=False)
    key_type: str
    scheme: str
    spki_der: bytes = field(repr=False)
    claims: Mapping[str, Any] | None = field(default=None, repr=False)


def key_binding_report_data(digest_input: bytes) -> bytes:
    """``SHA-256(digest_input) ‖ 32 × 00``: the report data RA-TLS binds (§3.2, §3.3)."""
    return hashlib.sha256(digest_input).digest() + bytes(32)


def _new_key(key_type: str) -> Any:
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown RA-TLS key type {key_type!r} (one of {', '.join(KEY_TYPES)})")


def _key_type_of(public_key: Any) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if isinstance(public_key.curve, ec.SECP384R1):
            return "ec-p384"
        if isinstance(public_key.curve, ec.SECP256R1):
            return "ec-p256"
        raise UnsupportedKeyType(f"certificate key: EC curve {public_key.curve.name} (need P-384 or P-256)")
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size == 3072:
            return "rsa-3072"
        raise UnsupportedKeyType(f"certificate key: RSA-{public_key.key_size} (only RSA-3072 is allowed)")
    raise UnsupportedKeyType(
        f"certificate key: {type(public_key).__name__} (need EC P-384/P-256 or RSA-3072)"
    )


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _check_ext_size(value: bytes, what: str) -> None:
    if not _EXT_MIN <= len(value) <= _EXT_MAX:
        raise MalformedEvidence(f"{what}: {len(value)} bytes, outside the allowed {_EXT_MIN}..{_EXT_MAX}")


def make_certificate(
    provider: EvidenceProvider,
    *,
    key_type: str = "ec-p384",
    legacy: bool = True,
    dice: bool = True,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> RaTlsCredentials:
    """Make a fresh key and a self-signed RA-TLS certificate whose quote(s) come from ``provider``.

    ``legacy`` adds the SGX-quote extension every Gramine verifier reads; ``dice`` adds the TCG DICE
    extension (Gramine ≥ 1.8 prefers it); RSA-3072 is for verifiers up to Gramine 1.3.

    Raises:
        ValueError: unknown ``key_type``, neither extension asked for, or not_after <= not_before.
        MalformedEvidence: the provider's quote does not fit Gramine's extension size rules.
        EvidenceError: the provider could not produce a quote.
    """
    if not (legacy or dice):
        raise ValueError("an RA-TLS certificate needs at least one of the legacy and DICE extensions")
    not_before = not_before or DEFAULT_NOT_BEFORE
    not_after = not_after or DEFAULT_NOT_AFTER
    if not_after <= not_before:
        raise ValueError(f"certificate validity: not_after {not_after} is not after not_before {not_before}")
    key = _new_key(key_type)
    public_key = key.public_key()
    spki = _spki(public_key)

    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT)
        .issuer_name(_SUBJECT)
        .public_key(public_key)
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=ski.digest, authority_cert_issuer=None, authority_cert_serial_number=None
            ),
            critical=False,
        )
    )
    if legacy:
        quote = provider.get_quote(key_binding_report_data(spki))
        _check_ext_size(quote, "legacy quote extension")
        builder = builder.add_extension(x509.UnrecognizedExtension(LEGACY_QUOTE_OID, quote), critical=False)
    if dice:
        claims = encode_claims(spki)
        quote2 = provider.get_quote(key_binding_report_data(claims))
        evidence = encode_evidence(quote2, claims)
        _check_ext_size(evidence, "TCG DICE evidence extension")
        builder = builder.add_extension(
            x509.UnrecognizedExtension(DICE_EVIDENCE_OID, evidence), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return RaTlsCredentials(
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        key_type=key_type,
    )


def _load(cert_bytes: bytes) -> x509.Certificate:
    if not isinstance(cert_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"certificate must be bytes, not {type(cert_bytes).__name__}")
    data = bytes(cert_bytes)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise MalformedCertificate(f"not an X.509 certificate: {exc}") from exc


def _evidence_extensions(cert: x509.Certificate) -> tuple[bytes | None, bytes | None]:
    """Return (DICE value, legacy value); reject duplicates and critical evidence extensions."""
    try:
        extensions = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        raise MalformedCertificate(f"certificate extensions: {exc}") from exc
    dice: bytes | None = None
    legacy: bytes | None = None
    for ext in extensions:
        if ext.oid not in (DICE_EVIDENCE_OID, LEGACY_QUOTE_OID, LEGACY_QUOTE_OID_INTENDED):
            continue
        if ext.critical:
            raise MalformedCertificate(f"evidence extension {ext.oid.dotted_string} is marked critical")
        value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else None
        if value is None:
            raise MalformedCertificate(f"evidence extension {ext.oid.dotted_string}: unexpected value type")
        if ext.oid == DICE_EVIDENCE_OID:
            dice = value
        elif legacy is not None:
            raise MalformedCertificate("two legacy quote extensions (both OID encodings)")
        else:
            legacy = value
    return dice, legacy


def extract_quote(cert_bytes: bytes) -> bytes:
    """Return the quote in an RA-TLS certificate (PEM or DER), for operator tools and audit records.

    The same quote :func:`verify_certificate` checks: the DICE extension's if present (there is no
    fallback from it), else the legacy extension's. Nothing is verified.

    Raises:
        MalformedCertificate: not a certificate.
        MalformedEvidence: the DICE extension is unreadable.
        MissingEvidence: no quote extension.
    """
    dice, legacy = _evidence_extensions(_load(cert_bytes))
    if dice is not None:
        return decode_evidence(dice)[0]
    if legacy is not None:
        return legacy
    raise MissingEvidence("certificate has no RA-TLS quote extension (neither TCG DICE nor legacy)")


def verify_certificate(cert_der: bytes, *, require_pubkey_hash: bool = True) -> RaTlsEvidence:
    """Check that an RA-TLS certificate's quote is bound to its key (gramine-formats.md §3.4 step 2).

    DICE extension present → it must verify (no fallback); otherwise the legacy extension must carry a
    quote whose report data is ``SHA-256(SPKI) ‖ 32 × 00``. Accepts PEM too.

    Raises:
        TypeError: ``cert_der`` is not bytes.
        MalformedCertificate: unparseable certificate or evidence extensions.
        UnsupportedKeyType: key is not EC P-384, EC P-256 or RSA-3072.
        MissingEvidence: no quote extension.
        MalformedEvidence: an extension value breaks the spec's shape rules.
        MissingPubkeyHash: DICE claims without ``pubkey-hash`` (and ``require_pubkey_hash``).
        KeyBindingMismatch: the report data does not commit to this key (or these claims).
    """
    cert = _load(cert_der)
    try:
        public_key = cert.public_key()
    except (ValueError, TypeError) as exc:
        raise UnsupportedKeyType(f"certificate key: {exc}") from exc
    key_type = _key_type_of(public_key)
    spki = _spki(public_key)
    dice, legacy = _evidence_extensions(cert)

    if dice is not None:
        _check_ext_size(dice, "TCG DICE evidence extension")
        quote, claims_bytes = decode_evidence(dice)
        report_data = report_data_of(quote, what="TCG DICE quote")
        if report_data[:32] != hashlib.sha256(claims_bytes).digest():
            raise KeyBindingMismatch("TCG DICE quote: report_data[0:32] is not SHA-256 of the claims")
        claims = decode_claims(claims_bytes)
        try:
            alg, digest = pubkey_hash_of(claims)
        except MissingPubkeyHash:
            if require_pubkey_hash:
                raise
        else:
            if hashlib.new(alg, spki).digest() != digest:
                raise KeyBindingMismatch(
                    f"TCG DICE claim 'pubkey-hash' is not the {alg} of this certificate's public key"
                )
        return RaTlsEvidence(quote=quote, key_type=key_type, scheme="dice", spki_der=spki, claims=claims)

    if legacy is not None:
        _check_ext_size(legacy, "legacy quote extension")
        report_data = report_data_of(legacy, what="legacy quote")
        if report_data != key_binding_report_data(spki):
            raise KeyBindingMismatch(
                "legacy quote: report_data is not SHA-256(certificate public key) followed by 32 zero bytes"
            )
        return RaTlsEvidence(quote=legacy, key_type=key_type, scheme="legacy", spki_der=spki)

    raise MissingEvidence("certificate has no RA-TLS quote extension (neither TCG DICE nor legacy)")


def parse_timestamp(text: str, *, what: str = "timestamp") -> _dt.datetime:
    """Parse Gramine's ``YYYYMMDDhhmmss`` (UTC) as used by ``RA_TLS_CERT_TIMESTAMP_NOT_*``.

    Raises:
        ValueError: not 14 digits forming a valid date.
    """
    if len(text) != 14 or not text.isdigit():
        raise ValueError(f"{what}: {text!r} is not YYYYMMDDhhmmss")
    try:
        return _dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=_dt.timezone.utc)
    except ValueError as exc:
        raise ValueError(f"{what}: {text!r}: {exc}") from exc


def validity_from_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[_dt.datetime, _dt.datetime]:
    """(not_before, not_after) from ``RA_TLS_CERT_TIMESTAMP_NOT_BEFORE/AFTER``, else Gramine's defaults."""
    env = os.environ if environ is None else environ
    nb = env.get("RA_TLS_CERT_TIMESTAMP_NOT_BEFORE")
    na = env.get("RA_TLS_CERT_TIMESTAMP_NOT_AFTER")
    return (
        parse_timestamp(nb, what="RA_TLS_CERT_TIMESTAMP_NOT_BEFORE") if nb else DEFAULT_NOT_BEFORE,
        parse_timestamp(na, what="RA_TLS_CERT_TIMESTAMP_NOT_AFTER") if na else DEFAULT_NOT_AFTER,
    )
