"""teeserve's named-secret extension, carried as message-4 application traffic (sans-IO).

Gramine's protocol releases exactly one secret per session (the broker's *default* secret). After it,
a teeserve client may ask for more secrets by name on the same, already attested session::

    request  (client → server): b"TEESERVE_SECRET_REQUEST_V1\\0" ‖ u16 BE name length ‖ name (ASCII)
    response (server → client): b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0" ‖ u32 BE length ‖ secret
                                (length 0 = denied; nothing else is said about why)

Names are 1–64 characters of ``[A-Za-z0-9_.-]`` (the policy's secret-name rule). Anything else (a
wrong magic, a longer or empty name, other characters) is a protocol error: the server closes the
session. A Gramine enclave never sends this, so the extension is invisible to it.
"""

from __future__ import annotations

import re
import struct

from ..provision import RESPONSE_MAGIC
from ._errors import ExtensionProtocolError

__all__ = [
    "DEFAULT_SECRET",
    "EXT_REQUEST_MAGIC",
    "MAX_NAME_LENGTH",
    "MAX_EXT_SECRET_SIZE",
    "encode_request",
    "encode_response",
    "RequestParser",
    "ResponseParser",
]

#: the secret every session gets first (Gramine's SECRET_PROVISION_SET_KEY=default; ra_config.json's name);
#: the named-secret extension asks for the others
DEFAULT_SECRET = "default"
EXT_REQUEST_MAGIC = b"TEESERVE_SECRET_REQUEST_V1\0"
MAX_NAME_LENGTH = 64
#: the largest secret a client accepts in an extension response
MAX_EXT_SECRET_SIZE = 64 * 1024
_NAME = re.compile(rb"\A[A-Za-z0-9_.-]{1,64}\Z")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_REQ_HEAD = len(EXT_REQUEST_MAGIC) + 2
_RESP_HEAD = len(RESPONSE_MAGIC) + 4


def encode_request(name: str) -> bytes:
    """The bytes asking for secret ``name``.

    Raises:
        ValueError: ``name`` is not a valid secret name.
    """
    raw = name.encode("ascii", "replace")
    if not _NAME.match(raw):
        raise ValueError(f"secret names are 1-{MAX_NAME_LENGTH} characters of letters, digits, '_', '.', '-'")
    return EXT_REQUEST_MAGIC + _U16.pack(len(raw)) + raw


def encode_response(secret: bytes | None) -> bytes:
    """The answer: the secret, or ``None`` for "denied" (length 0)."""
    body = secret or b""
    return RESPONSE_MAGIC + _U32.pack(len(body)) + body


class RequestParser:
    """Server side: feed received bytes, get complete secret names (in order)."""

    def __init__(self, max_buffer: int = 4096) -> None:
        self._buf = bytearray()
        self.max_buffer = max_buffer

    def feed(self, data: bytes) -> list[str]:
        """Names of the requests completed by ``data``.

        Raises:
            ExtensionProtocolError: bad magic, bad name, or too much buffered data.
        """
        self._buf += data
        if len(self._buf) > self.max_buffer:
            raise ExtensionProtocolError(f"more than {self.max_buffer} bytes of unanswered requests")
        names = []
        while self._buf:
            prefix = bytes(self._buf[: len(EXT_REQUEST_MAGIC)])
            if not EXT_REQUEST_MAGIC.startswith(prefix):
                raise ExtensionProtocolError("request does not start with TEESERVE_SECRET_REQUEST_V1\\0")
            if len(self._buf) < _REQ_HEAD:
                break
            (length,) = _U16.unpack_from(self._buf, len(EXT_REQUEST_MAGIC))
            if not 1 <= length <= MAX_NAME_LENGTH:
                raise ExtensionProtocolError(f"secret name length {length} is outside 1..{MAX_NAME_LENGTH}")
            if len(self._buf) < _REQ_HEAD + length:
                break
            raw = bytes(self._buf[_REQ_HEAD : _REQ_HEAD + length])
            if not _NAME.match(raw):
                raise ExtensionProtocolError("secret name has characters outside [A-Za-z0-9_.-]")
            del self._buf[: _REQ_HEAD + length]
            names.append(raw.decode("ascii"))
        return names


class ResponseParser:
    """Client side: feed received bytes, get complete answers (secret bytes, or ``None`` = denied)."""

    def __init__(self, max_secret: int = MAX_EXT_SECRET_SIZE) -> None:
        self._buf = bytearray()
        self.max_secret = max_secret

    def feed(self, data: bytes) -> list[bytes | None]:
        """Answers completed by ``data``.

        Raises:
            ExtensionProtocolError: bad magic or an oversize secret.
        """
        self._buf += data
        out: list[bytes | None] = []
        while self._buf:
            prefix = bytes(self._buf[: len(RESPONSE_MAGIC)])
            if not RESPONSE_MAGIC.startswith(prefix):
                raise ExtensionProtocolError(
                    "answer does not start with SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0"
                )
            if len(self._buf) < _RESP_HEAD:
                break
            (length,) = _U32.unpack_from(self._buf, len(RESPONSE_MAGIC))
            if length > self.max_secret:
                raise ExtensionProtocolError(
                    f"answer announces a {length}-byte secret, more than {self.max_secret}"
                )
            if len(self._buf) < _RESP_HEAD + length:
                break
            secret = bytes(self._buf[_RESP_HEAD : _RESP_HEAD + length])
            del self._buf[: _RESP_HEAD + length]
            out.append(secret if length else None)
        return out
