"""Gramine's secret-provisioning protocol (gramine-formats.md §2), wire-compatible in both directions.

- :class:`Connection` and its events: the protocol as a sans-IO state machine;
- :func:`fetch_secret` / :func:`open_session` / :func:`client_from_env`: the enclave side (asyncio +
  stdlib ``ssl``, RA-TLS client certificate, server checked against a CA and its host name);
- :class:`ProvisionServer`: the verifier side (pyOpenSSL, requires the client's RA-TLS certificate and
  hands it to an ``authorize`` callback), the base of the key broker;
- :func:`encode_secret` / :func:`decode_secret`: raw 16-byte keys (Gramine ≥ 1.3) or hex + NUL (≤ 1.2).

Imports are lazy (PEP 562): the errors load with the package, every other name on first use, so
the enclave side (``fetch_secret``, ``open_session``) does not load the verifier's pyOpenSSL server.
"""

from __future__ import annotations

import typing as _typing  # aliased: the public names are exactly __all__

from .._lazy import lazy_exports as _lazy_exports
from ._errors import (
    LocalProtocolError,
    ProtocolError,
    ProvisionConnectError,
    ProvisionDenied,
    ProvisionError,
    ProvisionTimeout,
    ProvisionTLSError,
    RemoteProtocolError,
    SecretFormatError,
    ServerListError,
)

if _typing.TYPE_CHECKING:  # the lazily loaded names, for type checkers and editors
    from ._client import (
        DEFAULT_TIMEOUT,
        ProvisionClient,
        ProvisionSession,
        client_context,
        client_from_env,
        fetch_secret,
        open_session,
        write_key_to_gramine,
    )
    from ._connection import (
        DEFAULT_MAX_SECRET_SIZE,
        MAX_SECRET_SIZE,
        NEED_DATA,
        REQUEST_MAGIC,
        RESPONSE_HEADER_SIZE,
        RESPONSE_MAGIC,
        Connection,
    )
    from ._events import ConnectionClosed, Data, Event, SecretRequest, SecretResponse
    from ._secret import KEY_SIZE, SECRET_FORMATS, decode_secret, encode_secret
    from ._server import DEFAULT_PORT, Authorize, ProvisionServer, ServerSession, server_context
    from ._servers import DEFAULT_SERVERS, parse_servers
    from ._state import Role, State

#: module -> the names it defines, imported on first access (teeserve._lazy)
_LAZY: dict[str, tuple[str, ...]] = {
    "_client": ("DEFAULT_TIMEOUT", "ProvisionClient", "ProvisionSession", "client_context",
        "client_from_env", "fetch_secret", "open_session", "write_key_to_gramine"),
    "_connection": ("DEFAULT_MAX_SECRET_SIZE", "MAX_SECRET_SIZE", "NEED_DATA", "REQUEST_MAGIC",
        "RESPONSE_HEADER_SIZE", "RESPONSE_MAGIC", "Connection"),
    "_events": ("ConnectionClosed", "Data", "Event", "SecretRequest", "SecretResponse"),
    "_secret": ("KEY_SIZE", "SECRET_FORMATS", "decode_secret", "encode_secret"),
    "_server": ("DEFAULT_PORT", "Authorize", "ProvisionServer", "ServerSession", "server_context"),
    "_servers": ("DEFAULT_SERVERS", "parse_servers"),
    "_state": ("Role", "State"),
}

__all__ = [
    "DEFAULT_MAX_SECRET_SIZE",
    "DEFAULT_PORT",
    "DEFAULT_SERVERS",
    "DEFAULT_TIMEOUT",
    "KEY_SIZE",
    "MAX_SECRET_SIZE",
    "NEED_DATA",
    "REQUEST_MAGIC",
    "RESPONSE_HEADER_SIZE",
    "RESPONSE_MAGIC",
    "SECRET_FORMATS",
    "Authorize",
    "Connection",
    "ConnectionClosed",
    "Data",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "ProvisionClient",
    "ProvisionConnectError",
    "ProvisionDenied",
    "ProvisionError",
    "ProvisionServer",
    "ProvisionSession",
    "ProvisionTLSError",
    "ProvisionTimeout",
    "RemoteProtocolError",
    "Role",
    "SecretFormatError",
    "SecretRequest",
    "SecretResponse",
    "ServerListError",
    "ServerSession",
    "State",
    "client_context",
    "client_from_env",
    "decode_secret",
    "encode_secret",
    "fetch_secret",
    "open_session",
    "parse_servers",
    "server_context",
    "write_key_to_gramine",
]


__getattr__, __dir__ = _lazy_exports(globals(), _LAZY)
