"""The secret-provisioning protocol as a sans-IO state machine (gramine-formats.md §2.3).

Strategy (h11's): no sockets here. The I/O shell feeds received bytes to :meth:`Connection.receive_data`
(``b""`` = end of stream), pulls events from :meth:`Connection.next_event` until it returns
:data:`NEED_DATA`, and writes the bytes :meth:`Connection.send` returns. Transitions live in
``_state.py``; this module only frames bytes.

Limits are enforced before anything is buffered beyond need: the request is compared byte by byte
as it arrives (a wrong first byte fails at once), and the response's announced secret length is
checked against ``max_secret_size`` as soon as its 4-byte header is complete, before the shell reads
the body (the shell reads at most :attr:`Connection.bytes_needed`). Any exception moves the session
to ``ERROR`` for good.
"""

from __future__ import annotations

import enum
import struct

from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import ConnectionClosed, Data, Event, SecretRequest, SecretResponse
from ._state import READING, Role, State, transition

__all__ = [
    "Connection",
    "NEED_DATA",
    "REQUEST_MAGIC",
    "RESPONSE_MAGIC",
    "RESPONSE_HEADER_SIZE",
    "MAX_SECRET_SIZE",
    "DEFAULT_MAX_SECRET_SIZE",
]

#: Message 1 (35 bytes, NUL included; the server compares all 35).
REQUEST_MAGIC = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0"
#: Start of message 2 (37 bytes, NUL included), followed by a u32 big-endian secret length.
RESPONSE_MAGIC = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0"
RESPONSE_HEADER_SIZE = len(RESPONSE_MAGIC) + 4
#: Gramine's client rejects secrets larger than INT_MAX.
MAX_SECRET_SIZE = 2**31 - 1
#: Enough for any key or small secret; raise it per connection if needed.
DEFAULT_MAX_SECRET_SIZE = 64 * 1024
_LENGTH = struct.Struct(">I")


class _Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


#: Returned by :meth:`Connection.next_event` when more bytes are needed.
NEED_DATA = _Signal.NEED_DATA


class Connection:
    """One side of a secret-provisioning session.

    Args:
        role: ``Role.CLIENT`` (the enclave) or ``Role.SERVER`` (the verifier), or their values
            ``"client"``/``"server"``.
        max_secret_size: largest secret a client accepts (1 … 2**31 - 1).
    """

    def __init__(self, role: Role | str, *, max_secret_size: int = DEFAULT_MAX_SECRET_SIZE) -> None:
        self.our_role = Role(role)
        self.their_role = Role.SERVER if self.our_role is Role.CLIENT else Role.CLIENT
        if not 1 <= max_secret_size <= MAX_SECRET_SIZE:
            raise ValueError(f"max_secret_size must be 1..{MAX_SECRET_SIZE}, got {max_secret_size}")
        self.max_secret_size = max_secret_size
        self.state = State.IDLE
        self._buffer = bytearray()
        self._eof = False
        self._secret_size: int | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.our_role.value} state={self.state.name} buffered={len(self._buffer)}>"

    # -- receiving -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed the stream.

        Raises:
            LocalProtocolError: data after end of stream, or the session is in ERROR.
        """
        if self.state is State.ERROR:
            raise LocalProtocolError("session is in ERROR state")
        if data:
            if self._eof:
                self.state = State.ERROR
                raise LocalProtocolError("received data after end of stream")
            self._buffer += data
        else:
            self._eof = True

    @property
    def bytes_needed(self) -> int | None:
        """How many more bytes complete the message being received, or None for free-form data.

        A shell that reads at most this much never buffers past a message boundary (Gramine's server
        reads exactly 35 bytes for the request).
        """
        expected = READING.get((self.state, self.their_role))
        have = len(self._buffer)
        if expected is SecretRequest:
            return max(len(REQUEST_MAGIC) - have, 0)
        if expected is SecretResponse:
            if self._secret_size is None:
                return max(RESPONSE_HEADER_SIZE - have, 0)
            return max(RESPONSE_HEADER_SIZE + self._secret_size - have, 0)
        return None

    def next_event(self) -> Event | _Signal:
        """Return the next complete event from the peer, or :data:`NEED_DATA`.

        After the stream ended, returns :class:`ConnectionClosed` (repeatedly).

        Raises:
            RemoteProtocolError: the peer broke the protocol (session → ERROR).
            LocalProtocolError: called in ERROR state.
        """
        if self.state is State.ERROR:
            raise LocalProtocolError("session is in ERROR state")
        if self.state is State.CLOSED:
            return ConnectionClosed()
        try:
            event = self._parse()
            if event is not NEED_DATA:
                self._advance(self.their_role, event)  # type: ignore[arg-type]
            return event
        except BaseException:
            self.state = State.ERROR
            raise

    def _parse(self) -> Event | _Signal:
        expected = READING.get((self.state, self.their_role))
        buf = self._buffer
        if expected is None:
            if buf:
                raise RemoteProtocolError(
                    f"{self.their_role.value} sent {len(buf)} bytes in state {self.state.name}, "
                    "when it is not its turn to speak"
                )
        elif expected is SecretRequest:
            prefix = bytes(buf[: len(REQUEST_MAGIC)])
            if not REQUEST_MAGIC.startswith(prefix):
                raise RemoteProtocolError("request does not start with SECRET_PROVISION_RA_TLS_REQUEST_V1\\0")
            if len(buf) >= len(REQUEST_MAGIC):
                del buf[: len(REQUEST_MAGIC)]
                return SecretRequest()
            if self._eof and buf:
                raise RemoteProtocolError(
                    f"stream ended inside the request ({len(buf)} of {len(REQUEST_MAGIC)} bytes)"
                )
        elif expected is SecretResponse:
            prefix = bytes(buf[: len(RESPONSE_MAGIC)])
            if not RESPONSE_MAGIC.startswith(prefix):
                raise RemoteProtocolError(
                    "response does not start with SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0"
                )
            if self._secret_size is None and len(buf) >= RESPONSE_HEADER_SIZE:
                (size,) = _LENGTH.unpack_from(buf, len(RESPONSE_MAGIC))
                if size == 0:
                    raise RemoteProtocolError("response announces an empty secret")
                if size > self.max_secret_size:
                    raise RemoteProtocolError(
                        f"response announces a {size}-byte secret, "
                        f"more than the {self.max_secret_size} allowed"
                    )
                self._secret_size = size
            if self._secret_size is not None and len(buf) >= RESPONSE_HEADER_SIZE + self._secret_size:
                end = RESPONSE_HEADER_SIZE + self._secret_size
                secret = bytes(buf[RESPONSE_HEADER_SIZE:end])
                del buf[:end]
                return SecretResponse(secret)
            if self._eof and buf:
                total = (
                    str(RESPONSE_HEADER_SIZE + self._secret_size)
                    if self._secret_size is not None
                    else f"at least {RESPONSE_HEADER_SIZE}"
                )
                raise RemoteProtocolError(f"stream ended inside the response ({len(buf)} of {total} bytes)")
        elif expected is Data:
            if buf:
                data = bytes(buf)
                buf.clear()
                return Data(data)
        if self._eof:
            return ConnectionClosed()
        return NEED_DATA

    # -- sending ---------------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Return the bytes that put ``event`` on the wire (``b""`` for :class:`ConnectionClosed`).

        Raises:
            LocalProtocolError: ``event`` is not allowed for our role in this state, or malformed
                (e.g. an empty or oversize secret); the session moves to ERROR.
        """
        return b"".join(self.send_records(event))

    def send_records(self, event: Event) -> list[bytes]:
        """Like :meth:`send`, split the way Gramine writes them: message 2 and 3 as separate TLS writes."""
        if self.state is State.ERROR:
            raise LocalProtocolError("session is in ERROR state")
        try:
            records = self._encode(event)
            self._advance(self.our_role, event)
        except BaseException:
            self.state = State.ERROR
            raise
        return records

    def _encode(self, event: Event) -> list[bytes]:
        if isinstance(event, SecretRequest):
            return [REQUEST_MAGIC]
        if isinstance(event, SecretResponse):
            size = len(event.secret)
            if not 1 <= size <= MAX_SECRET_SIZE:
                raise LocalProtocolError(f"a secret must be 1..{MAX_SECRET_SIZE} bytes, got {size}")
            return [RESPONSE_MAGIC + _LENGTH.pack(size), event.secret]
        if isinstance(event, Data):
            return [event.data]
        if isinstance(event, ConnectionClosed):
            return [b""]
        raise LocalProtocolError(f"cannot send {type(event).__name__}")

    def _advance(self, sender: Role, event: Event) -> None:
        new = transition(self.state, sender, event)
        if new is None:
            error = LocalProtocolError if sender is self.our_role else RemoteProtocolError
            raise error(f"{sender.value} may not send {type(event).__name__} in state {self.state.name}")
        self.state = new
