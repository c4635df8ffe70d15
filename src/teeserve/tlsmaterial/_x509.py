"""Issuing the model owner's CA, server and client certificates, in memory.

Strategy: pure code, no files. :func:`issue_material` takes validated names and returns PEM bytes;
:mod:`._writer` puts them on disk. Everything X.509 is done by ``cryptography``.

What gets issued (the reference deployment's script makes RSA-4096 certificates with a CN only; modern
TLS stacks, gRPC included, match host names against subjectAltName only, so teeserve always sets it):

- **CA**: self-signed, ``basicConstraints CA:TRUE, pathlen:0`` (critical), ``keyUsage keyCertSign,
  cRLSign`` (critical), subject and authority key identifiers.
- **Server / client leaf**: ``basicConstraints CA:FALSE`` (critical), ``keyUsage digitalSignature``
  (plus ``keyEncipherment`` for RSA keys; critical), ``extendedKeyUsage serverAuth`` or ``clientAuth``,
  subjectAltName (the CN as a DNS name, or as an IP address when the CN is an IP literal, then the extra
  names and addresses given), subject key identifier and an authority key identifier from the CA's.
- Signatures: SHA-256 (ECDSA for EC keys, PKCS#1 v1.5 for RSA keys). Random 159-bit serial numbers.
- Validity starts :data:`CLOCK_SKEW` before now, so a peer whose clock is a little behind accepts it.
- Private keys: PKCS#8 PEM, unencrypted (on the TEE host they are protected as Gramine encrypted files).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._errors import CertificateOptionsError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "KEY_TYPES",
    "DEFAULT_KEY_TYPE",
    "DEFAULT_DAYS",
    "DEFAULT_CA_DAYS",
    "MAX_DAYS",
    "CLOCK_SKEW",
    "IssuedMaterial",
    "issue_material",
    "check_dns_name",
    "check_ip",
]

#: Key types, fastest first. ``ec-p256`` is the default; ``rsa-4096`` matches the reference deployment.
KEY_TYPES: tuple[str, ...] = ("ec-p256", "rsa-3072", "rsa-4096")
DEFAULT_KEY_TYPE = "ec-p256"
#: Validity of the server and client certificates, in days.
DEFAULT_DAYS = 365
#: Validity of the CA certificate, in days (never shorter than the leaves').
DEFAULT_CA_DAYS = 3650
#: Longest validity accepted, in days (100 years).
MAX_DAYS = 36500
#: How far before "now" certificates become valid.
CLOCK_SKEW = datetime.timedelta(minutes=5)

# RFC 1123 host name label: letters, digits and hyphens, not starting or ending with a hyphen.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
# X.509 upper bound for commonName (RFC 5280, ub-common-name).
_MAX_CN = 64


@dataclass(frozen=True, slots=True)
class IssuedMaterial:
    """PEM bytes of a freshly issued set. ``client_*`` are ``None`` for one-way TLS."""

    ca_cert: bytes
    ca_key: bytes = field(repr=False)
    server_cert: bytes
    server_key: bytes = field(repr=False)
    client_cert: bytes | None = None
    client_key: bytes | None = field(default=None, repr=False)


def check_ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an IP address literal, or raise :class:`CertificateOptionsError` naming ``what``."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise CertificateOptionsError(f"{what}: {text!r} is not an IPv4 or IPv6 address") from None
    if getattr(address, "scope_id", None):  # a certificate has no place for it: it would be dropped
        raise CertificateOptionsError(f"{what}: {text!r} has a zone (%{address.scope_id}), which a certificate "
                                      "cannot hold; give the address without it")
    return address


def check_dns_name(text: str, what: str, *, wildcard: bool = False) -> str:
    """Check a host name for a DNS subjectAltName; return it (lower-cased).

    Only ASCII names are accepted (international names must be given in their ``xn--`` form).
    ``wildcard`` allows a leftmost ``*`` label (``*.example.com``).
    """
    if not text:
        raise CertificateOptionsError(f"{what}: empty host name")
    if not text.isascii():
        raise CertificateOptionsError(
            f"{what}: {text!r} is not an ASCII host name (give international names in xn-- form)"
        )
    if len(text) > 253:
        raise CertificateOptionsError(f"{what}: host name longer than 253 characters")
    labels = text.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    for label in labels:
        if not _LABEL.match(label):
            raise CertificateOptionsError(
                f"{what}: {text!r} is not a valid host name (labels of letters, digits and hyphens, "
                "separated by dots)"
            )
    if labels[-1].isdigit():
        # "10.0.0.300" must not slip through as a DNS name: no top-level domain is all digits.
        raise CertificateOptionsError(f"{what}: {text!r} is neither a valid IP address nor a host name")
    return text.lower()


def _check_cn(text: str, what: str) -> None:
    if not text or len(text) > _MAX_CN:
        raise CertificateOptionsError(f"{what}: must be 1 to {_MAX_CN} characters")


def _sans(cn: str, dns: Iterable[str], ips: Iterable[str], what: str) -> list[x509.GeneralName]:
    """The subjectAltName entries for a leaf: the CN first, then the extra names, without repeats."""
    from cryptography import x509

    cn_what = f"{what} CN (--{what}-cn)"
    _check_cn(cn, cn_what)
    names: list[x509.GeneralName] = []
    try:
        ipaddress.ip_address(cn)
    except ValueError:
        cn_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    else:
        cn_ip = check_ip(cn, cn_what)
    if cn_ip is not None:
        names.append(x509.IPAddress(cn_ip))
    else:
        names.append(x509.DNSName(check_dns_name(cn, cn_what)))
    for name in dns:
        entry = x509.DNSName(check_dns_name(name, f"{what} DNS name (--{what}-dns)", wildcard=True))
        if entry not in names:
            names.append(entry)
    for ip in ips:
        entry_ip = x509.IPAddress(check_ip(ip, f"{what} IP address (--{what}-ip)"))
        if entry_ip not in names:
            names.append(entry_ip)
    return names


def _check_days(days: int, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise CertificateOptionsError(f"{what}: must be a whole number of days from 1 to {MAX_DAYS}")


def _bad_key_type(key_type: str) -> CertificateOptionsError:
    choices = ", ".join(KEY_TYPES)
    return CertificateOptionsError(f"key type (--key-type): {key_type!r} is not one of {choices}")


def _new_key(key_type: str) -> EllipticCurvePrivateKey | RSAPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if key_type == "rsa-4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    raise _bad_key_type(key_type)


def _key_pem(key: EllipticCurvePrivateKey | RSAPrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_material(
    *,
    server_cn: str,
    client_cn: str | None = None,
    key_type: str = DEFAULT_KEY_TYPE,
    days: int = DEFAULT_DAYS,
    ca_days: int | None = None,
    ca_cn: str | None = None,
    server_dns: Sequence[str] = (),
    server_ips: Sequence[str] = (),
    client_dns: Sequence[str] = (),
    now: datetime.datetime | None = None,
) -> IssuedMaterial:
    """Issue a CA, a server certificate and (when ``client_cn`` is given) a client certificate.

    ``ca_days`` defaults to the larger of :data:`DEFAULT_CA_DAYS` and ``days``; ``ca_cn`` defaults to
    ``"<server_cn> CA"`` (or ``"teeserve CA"`` when that would be too long).

    Raises:
        CertificateOptionsError: a name, address, key type or validity that cannot be issued. All
            inputs are checked before any key is generated.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # Check everything first: a typo should fail fast, not after generating RSA-4096 keys.
    if key_type not in KEY_TYPES:
        raise _bad_key_type(key_type)
    _check_days(days, "certificate validity (--days)")
    if ca_days is None:
        ca_days = max(DEFAULT_CA_DAYS, days)
    _check_days(ca_days, "CA validity (--ca-days)")
    if ca_days < days:
        raise CertificateOptionsError(
            f"CA validity (--ca-days {ca_days}) is shorter than the certificates' (--days {days})"
        )
    server_sans = _sans(server_cn, server_dns, server_ips, "server")
    if client_cn is None:
        if client_dns:
            raise CertificateOptionsError(
                "client DNS names (--client-dns) given without a client CN (one-way TLS)"
            )
        client_sans = None
    else:
        client_sans = _sans(client_cn, client_dns, (), "client")
    if ca_cn is None:
        ca_cn = f"{server_cn} CA" if len(server_cn) + 3 <= _MAX_CN else "teeserve CA"
    _check_cn(ca_cn, "CA CN (--ca-cn)")
    if ca_cn in (server_cn, client_cn):
        raise CertificateOptionsError(
            f"CA CN (--ca-cn): {ca_cn!r} must differ from the server and client CNs"
        )

    start = (now or datetime.datetime.now(datetime.timezone.utc)) - CLOCK_SKEW
    hash_alg = hashes.SHA256()

    ca_key = _new_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_cn)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hash_alg)
    )

    def leaf(cn: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = _new_key(key_type)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(ca_key, hash_alg)
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    server_cert, server_key = leaf(server_cn, server_sans, ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert = client_key = None
    if client_cn is not None and client_sans is not None:
        client_cert, client_key = leaf(client_cn, client_sans, ExtendedKeyUsageOID.CLIENT_AUTH)
    return IssuedMaterial(
        ca_cert=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_key=_key_pem(ca_key),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
    )
