"""The events of the secret-provisioning conversation (gramine-formats.md §2.3).

Each event is one protocol message (or the end of the stream), as frozen slotted dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Event", "SecretRequest", "SecretResponse", "Data", "ConnectionClosed"]


class Event:
    """Base class of provisioning events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SecretRequest(Event):
    """Message 1, client → server: ``SECRET_PROVISION_RA_TLS_REQUEST_V1\\0``."""


@dataclass(frozen=True, slots=True)
class SecretResponse(Event):
    """Messages 2 + 3, server → client: response magic, u32 big-endian length, the secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes):
            raise TypeError(f"secret must be bytes, not {type(self.secret).__name__}")


@dataclass(frozen=True, slots=True)
class Data(Event):
    """Message 4: free-form application bytes on the same session, after the secret."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer ended the stream (TLS close_notify / EOF), or we are about to."""
