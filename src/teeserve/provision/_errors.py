"""Errors of Gramine's secret-provisioning protocol and its client/server shells.

Tree::

    TeeserveError
    └── ProvisionError                    anything that kept a secret from being provisioned
        ├── ProtocolError                 the byte stream broke the protocol (never raised as such)
        │   ├── LocalProtocolError        we misused the state machine (a bug on this side)
        │   └── RemoteProtocolError       the peer sent something the protocol forbids
        ├── ServerListError               SECRET_PROVISION_SERVERS has no usable host:port (exit 2)
        ├── ProvisionConnectError         no server in the list accepted a TCP connection
        ├── ProvisionTLSError             TLS handshake failed (unknown CA, host-name mismatch, ...)
        ├── ProvisionTimeout              a connect, handshake or read took too long
        ├── ProvisionDenied               the server closed the session without sending a secret
        └── SecretFormatError             the secret is not in the form asked for (16 raw bytes, hex+NUL)

Messages name the server and the step; they never contain secret bytes. The server side says nothing
to a rejected client (it just closes); reasons go to the local log only.
"""

from __future__ import annotations

from .._errors import TeeserveError

__all__ = [
    "ProvisionError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ServerListError",
    "ProvisionConnectError",
    "ProvisionTLSError",
    "ProvisionTimeout",
    "ProvisionDenied",
    "SecretFormatError",
]


class ProvisionError(TeeserveError):
    """Secret provisioning failed."""


class ProtocolError(ProvisionError):
    """Abstract: the provisioning byte stream broke the protocol. Raise a subclass."""

    def __init__(self, *args: object) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(*args)


class LocalProtocolError(ProtocolError):
    """This side asked the state machine for something the protocol does not allow now."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes the protocol does not allow (bad magic, oversize secret, early close...)."""


class ServerListError(ProvisionError):
    """The server list (``SECRET_PROVISION_SERVERS``) has no usable ``host:port`` entry."""

    exit_code = 2


class ProvisionConnectError(ProvisionError):
    """No server in the list accepted a TCP connection."""


class ProvisionTLSError(ProvisionError):
    """The TLS handshake with the provisioning server failed."""


class ProvisionTimeout(ProvisionError):
    """The provisioning server did not answer in time."""


class ProvisionDenied(ProvisionError):
    """The server ended the session without a secret (attestation or policy refused us)."""


class SecretFormatError(ProvisionError):
    """The secret does not have the requested form."""
