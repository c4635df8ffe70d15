"""TensorFlow Serving's ``ssl.cfg``: the ``SSLConfig`` message in protobuf text format.

Strategy: the text format is read and written by ``google.protobuf.text_format`` against the real
``tensorflow.serving.SSLConfig`` descriptor (vendored in :mod:`teeserve._proto`), never by hand. The
fields hold PEM *contents*, not paths (spec: tf-serving-api.md section 7)::

    server_key: "-----BEGIN PRIVATE KEY-----\\nMIGH...\\n-----END PRIVATE KEY-----\\n"
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."
    client_verify: true

Parsing goes further than TensorFlow Serving does: the key must load, match the first certificate of
``server_cert``, and ``custom_ca`` must be present when ``client_verify`` is true, so a broken file is
reported when it is read (naming the file and field) rather than as a TLS handshake failure later.

Errors never quote the file: protobuf's messages echo the offending line, which may be a line of the
private key, so they are reduced to a position and a kind of problem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ._errors import SSLConfigError

__all__ = ["SSLConfig", "parse_ssl_config", "format_ssl_config", "load_ssl_config", "FIELDS"]

#: The SSLConfig fields, in field-number order (server_key=1, server_cert=2, custom_ca=3, client_verify=4).
FIELDS: tuple[str, ...] = ("server_key", "server_cert", "custom_ca", "client_verify")
_FIELD_LIST = ", ".join(FIELDS)


@dataclass(frozen=True, slots=True)
class SSLConfig:
    """The contents of an ``ssl.cfg``. ``server_key`` is left out of ``repr`` (it is a secret)."""

    server_key: str = field(repr=False)
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


def _message_class():  # type: ignore[no-untyped-def]
    from .._proto import pb

    return pb.SSLConfig


def format_ssl_config(cfg: SSLConfig) -> str:
    """Return ``cfg`` as SSLConfig text format (PEM as string literals with ``\\n`` escapes).

    Fields equal to their default (an empty ``custom_ca``, ``client_verify: false``) are left out, as
    protobuf's text printer does for proto3 messages; TensorFlow Serving reads them as the default.
    """
    from google.protobuf import text_format

    message = _message_class()(
        server_key=cfg.server_key,
        server_cert=cfg.server_cert,
        custom_ca=cfg.custom_ca,
        client_verify=cfg.client_verify,
    )
    return text_format.MessageToString(message)


def _describe_parse_error(exc: Exception) -> str:
    """A safe description of a text_format parse error: position and kind, never the echoed text."""
    msg = str(exc)
    line = getattr(exc, "GetLine", lambda: None)()
    column = getattr(exc, "GetColumn", lambda: None)()
    where = f"line {line}, column {column}: " if line else ""
    if "has no field named" in msg:
        m = re.search(r'has no field named "([^"]*)"', msg)
        name = m.group(1) if m else ""
        # Real field names are lower_snake_case; anything else may be a fragment of a PEM body.
        shown = repr(name) if re.fullmatch(r"[a-z_][a-z0-9_]{0,39}", name) else "(name not shown)"
        return f"{where}unknown field {shown}; SSLConfig has {_FIELD_LIST}"
    m = re.search(r'should not have multiple "([a-z_]+)" fields', msg)
    if m and m.group(1) in FIELDS:
        return f"{where}field {m.group(1)} is given more than once"
    kinds = [
        ("Expected string", "expected a quoted string (the PEM text)"),
        ("missing ending quote", "string literal without its closing quote"),
        ('Expected "true" or "false"', "expected true or false"),
        ("Expected identifier", "expected a field name"),
        ('Expected ":"', "expected ':' after the field name"),
        ("escape", "invalid escape sequence in a string literal"),
    ]
    for needle, text in kinds:
        if needle in msg:
            return f"{where}{text}"
    return f"{where}not valid SSLConfig text format"


def parse_ssl_config(text: str | bytes, source: str) -> SSLConfig:
    """Parse and check an ``ssl.cfg``; ``source`` (usually the file name) is named in every error.

    Raises:
        SSLConfigError: malformed text format, unknown or repeated fields, a ``server_key`` that is not
            an unencrypted PEM private key, a ``server_cert`` that is not PEM certificates or does not
            match the key, a ``custom_ca`` that is not PEM certificates, or ``client_verify: true``
            without ``custom_ca``.
    """
    from google.protobuf import text_format

    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSLConfigError(source, f"not UTF-8 text (bad byte at offset {exc.start})") from None
    message = _message_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise SSLConfigError(source, _describe_parse_error(exc)) from None
    except (ValueError, TypeError, UnicodeError):
        # Anything else protobuf may raise on odd input; its message may quote the input, so drop it.
        raise SSLConfigError(source, "not valid SSLConfig text format") from None
    cfg = SSLConfig(
        server_key=message.server_key,
        server_cert=message.server_cert,
        custom_ca=message.custom_ca,
        client_verify=bool(message.client_verify),
    )
    check_ssl_config(cfg, source)
    return cfg


def load_ssl_config(path: str | os.PathLike[str]) -> SSLConfig:
    """Read and parse the ``ssl.cfg`` at ``path`` (see :func:`parse_ssl_config`)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SSLConfigError(source, f"cannot read: {exc.strerror}") from None
    return parse_ssl_config(data, source)


def _load_certificates(pem: str, source: str, field_name: str) -> list[bytes]:
    """Parse PEM certificates fully (``cryptography`` decodes public keys lazily); return their
    SubjectPublicKeyInfo DER."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("utf-8"))
        return [cert.public_key().public_bytes(*spki) for cert in certificates]
    except (ValueError, UnsupportedAlgorithm):
        raise SSLConfigError(source, "not valid PEM certificate(s)", field=field_name) from None


def check_ssl_config(cfg: SSLConfig, source: str) -> None:
    """Check that ``cfg`` can serve TLS: key loads and matches the certificate, CA present for mTLS,
    and OpenSSL accepts all of it (a server ``SSLContext`` is built and thrown away).

    Raises:
        SSLConfigError: naming ``source`` and the field at fault.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if not cfg.server_key.strip():
        raise SSLConfigError(source, "missing or empty (the server's PEM private key)", field="server_key")
    if not cfg.server_cert.strip():
        raise SSLConfigError(source, "missing or empty (the server's PEM certificate)", field="server_cert")
    try:
        key = serialization.load_pem_private_key(cfg.server_key.encode("utf-8"), password=None)
    except TypeError:
        raise SSLConfigError(
            source, "private key is password-protected; ssl.cfg needs an unencrypted key", field="server_key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SSLConfigError(source, "not a PEM private key", field="server_key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    chain = _load_certificates(cfg.server_cert, source, "server_cert")
    if chain[0] != key.public_key().public_bytes(*spki):
        raise SSLConfigError(
            source,
            "the first certificate does not match server_key (they come from different key pairs)",
            field="server_cert",
        )
    if cfg.custom_ca.strip():
        _load_certificates(cfg.custom_ca, source, "custom_ca")
    elif cfg.client_verify:
        raise SSLConfigError(
            source,
            "missing or empty, but client_verify is true (mutual TLS needs the CA that signs client "
            "certificates)",
            field="custom_ca",
        )
    # Finally, the TLS engine itself must accept the PEM text (OpenSSL's PEM reader is stricter than
    # cryptography's about line ends, for one).
    from ._contexts import server_ssl_context

    server_ssl_context(cfg, source=source)
