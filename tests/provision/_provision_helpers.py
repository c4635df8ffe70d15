"""Shared helpers for the provisioning tests: a throwaway PKI, the broker's decision in miniature,
and a forger for RA-TLS-shaped certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeserve.attest import ratls, verify_evidence

MR_ENCLAVE = b"\x5a" * 32
WRAP_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


def make_leaf(ca: tuple[Any, x509.Certificate], names: list[str]) -> tuple[Any, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


def write_pem(path: Path, *, cert: x509.Certificate | None = None, key: Any = None) -> Path:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    return path


@dataclass
class Pki:
    ca_path: Path
    other_ca_path: Path
    server_cert: Path
    server_key: Path
    wrong_name_cert: Path
    wrong_name_key: Path
    ca_cert: x509.Certificate


@dataclass
class Authorizer:
    """The broker's decision in miniature: RA-TLS key binding, simulated quote signature, MRENCLAVE."""

    trusted: list[Any]
    secret: bytes | None = WRAP_KEY
    calls: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    denials: list[str] = field(default_factory=list)

    def __call__(self, cert_der: bytes, peer: tuple[str, int]) -> bytes | None:
        self.calls.append((cert_der, peer))
        try:
            evidence = ratls.verify_certificate(cert_der)
            verified = verify_evidence(evidence.quote, collateral=None, sim_keys=self.trusted)
        except Exception as exc:
            self.denials.append(type(exc).__name__)
            return None
        if verified.sgx is None or verified.sgx.mr_enclave != MR_ENCLAVE:
            self.denials.append("mr_enclave")
            return None
        return self.secret


def forge_ratls(key: Any, legacy_quote: bytes) -> ratls.RaTlsCredentials:
    """An RA-TLS-shaped certificate for ``key`` carrying an arbitrary (e.g. stolen) legacy quote."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(ratls.DEFAULT_NOT_BEFORE).not_valid_after(ratls.DEFAULT_NOT_AFTER)
        .add_extension(x509.UnrecognizedExtension(ratls.LEGACY_QUOTE_OID, legacy_quote), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return ratls.RaTlsCredentials(
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        key_type="ec-p384",
    )
