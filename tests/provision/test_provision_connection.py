"""The sans-IO provisioning state machine: exact wire bytes (gramine-formats.md §2.3), both roles
through a ConnectionPair, byte-at-a-time feeding, limits, and garbage → only our errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeserve import TeeserveError, provision
from teeserve.provision import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Data,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Role,
    SecretRequest,
    SecretResponse,
    State,
)

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def events(conn: Connection) -> list[Any]:
    out = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, ConnectionClosed):
            return out


class ConnectionPair:
    """A client and a server state machine joined by an in-memory link."""

    def __init__(self, max_secret_size: int = provision.DEFAULT_MAX_SECRET_SIZE) -> None:
        self.client = Connection(Role.CLIENT, max_secret_size=max_secret_size)
        self.server = Connection(Role.SERVER)
        self.wire: list[bytes] = []

    def send(self, sender: Connection, event: Any) -> list[Any]:
        data = sender.send(event)
        self.wire.append(data)
        receiver = self.server if sender is self.client else self.client
        receiver.receive_data(data) if data else receiver.receive_data(b"")
        return events(receiver)


# -- exact bytes of messages 1–3 ------------------------------------------------------------------


def test_wire_bytes_of_messages_1_to_3() -> None:
    pair = ConnectionPair()
    assert pair.send(pair.client, SecretRequest()) == [SecretRequest()]
    assert pair.send(pair.server, SecretResponse(KEY)) == [SecretResponse(KEY)]
    request, response = pair.wire
    # message 1: 35 bytes, ASCII + NUL, ending 5f 56 31 00
    assert request == b"SECRET_PROVISION_RA_TLS_REQUEST_V1\x00"
    assert len(request) == 35 and request[-4:] == bytes.fromhex("5f563100")
    # message 2: 37-byte magic (with ':' and NUL) + u32 BIG-endian length; message 3: the secret
    assert response[:37] == b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"
    assert response[37:41] == bytes.fromhex("00000010")
    assert response[41:] == KEY and len(response) == 57
    assert pair.client.state is pair.server.state is State.PROVISIONED


def test_send_records_split_like_gramine() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(provision.REQUEST_MAGIC)
    assert events(server) == [SecretRequest()]
    secret = bytes(range(256)) * 2
    header, body = server.send_records(SecretResponse(secret))
    assert header == provision.RESPONSE_MAGIC + (512).to_bytes(4, "big") and body == secret


def test_hex_secret_on_the_wire() -> None:
    secret = provision.encode_secret(KEY, "hex")
    assert secret == b"00112233445566778899aabbccddeeff\x00" and len(secret) == 33
    pair = ConnectionPair()
    pair.send(pair.client, SecretRequest())
    (ev,) = pair.send(pair.server, SecretResponse(secret))
    assert ev.secret == secret and pair.wire[1][37:41] == bytes.fromhex("00000021")
    assert provision.decode_secret(ev.secret, "hex") == KEY


# -- the full conversation, and byte-at-a-time feeding ---------------------------------------------


def test_application_traffic_and_close() -> None:
    pair = ConnectionPair()
    pair.send(pair.client, SecretRequest())
    pair.send(pair.server, SecretResponse(KEY))
    assert pair.send(pair.client, Data(b"hello")) == [Data(b"hello")]
    assert pair.send(pair.server, Data(b"world")) == [Data(b"world")]
    assert pair.send(pair.server, ConnectionClosed()) == [ConnectionClosed()]
    assert pair.server.state is pair.client.state is State.CLOSED
    assert pair.client.next_event() == ConnectionClosed()  # repeatable


def _feed(conn: Connection, data: bytes, step: int) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(data), step):
        conn.receive_data(data[i : i + step])
        out += events(conn)
    return out


@pytest.mark.parametrize("step", [1, 2, 7, 35, 41, 1000])
def test_feeding_in_pieces_gives_the_same_events(step: int) -> None:
    server = Connection(Role.SERVER)
    assert _feed(server, provision.REQUEST_MAGIC, step) == [SecretRequest()]
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    stream = provision.RESPONSE_MAGIC + (16).to_bytes(4, "big") + KEY
    got = _feed(client, stream, step)
    assert got == [SecretResponse(KEY)]
    assert client.state is State.PROVISIONED


def test_bytes_needed_guides_exact_reads() -> None:
    server = Connection(Role.SERVER)
    assert server.bytes_needed == 35
    server.receive_data(provision.REQUEST_MAGIC[:10])
    assert server.next_event() is NEED_DATA and server.bytes_needed == 25
    server.receive_data(provision.REQUEST_MAGIC[10:])
    assert server.next_event() == SecretRequest() and server.bytes_needed is None
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    assert client.bytes_needed == 41
    client.receive_data(provision.RESPONSE_MAGIC + (1000).to_bytes(4, "big"))
    assert client.next_event() is NEED_DATA and client.bytes_needed == 1000
    client.receive_data(b"x" * 400)
    assert client.next_event() is NEED_DATA and client.bytes_needed == 600


# -- remote errors ---------------------------------------------------------------------------------


def test_wrong_request_magic_fails_on_first_bad_byte() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"SECRET_PROVISION_RA_TLS_REQUEST_V2")  # V2: wrong at byte 33
    with pytest.raises(RemoteProtocolError, match="REQUEST_V1"):
        server.next_event()
    assert server.state is State.ERROR
    with pytest.raises(LocalProtocolError, match="ERROR"):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.send(SecretResponse(KEY))
    other = Connection(Role.SERVER)
    other.receive_data(b"G")  # e.g. an HTTP client: refused at the first byte
    with pytest.raises(RemoteProtocolError):
        other.next_event()


def test_request_without_nul_is_wrong() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"SECRET_PROVISION_RA_TLS_REQUEST_V1\n")
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_oversize_secret_refused_from_the_header() -> None:
    client = Connection(Role.CLIENT, max_secret_size=1024)
    client.send(SecretRequest())
    client.receive_data(provision.RESPONSE_MAGIC + (1025).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="1025-byte secret"):
        client.next_event()
    assert client.state is State.ERROR
    at_limit = Connection(Role.CLIENT, max_secret_size=1024)
    at_limit.send(SecretRequest())
    at_limit.receive_data(provision.RESPONSE_MAGIC + (1024).to_bytes(4, "big") + b"s" * 1024)
    assert at_limit.next_event() == SecretResponse(b"s" * 1024)


def test_empty_secret_and_bad_response_magic() -> None:
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    client.receive_data(provision.RESPONSE_MAGIC + bytes(4))
    with pytest.raises(RemoteProtocolError, match="empty secret"):
        client.next_event()
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    client.receive_data(b"SECRET_PROVISION_RA_TLS_RESPONSE_V1\x00")  # ':' missing
    with pytest.raises(RemoteProtocolError, match="RESPONSE_V1"):
        client.next_event()


@pytest.mark.parametrize("cut", [1, 36, 40, 41, 50])
def test_stream_ending_mid_response(cut: int) -> None:
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    client.receive_data((provision.RESPONSE_MAGIC + (16).to_bytes(4, "big") + KEY)[:cut])
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="stream ended inside the response"):
        client.next_event()


def test_clean_close_is_an_event() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed() and server.state is State.CLOSED
    client = Connection(Role.CLIENT)
    client.send(SecretRequest())
    client.receive_data(b"")  # a denying server closes without a byte
    assert client.next_event() == ConnectionClosed()
    half = Connection(Role.SERVER)
    half.receive_data(provision.REQUEST_MAGIC[:20])
    half.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside the request"):
        half.next_event()


def test_peer_speaking_out_of_turn() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(provision.REQUEST_MAGIC + b"extra")
    assert server.next_event() == SecretRequest()
    with pytest.raises(RemoteProtocolError, match="not its turn"):
        server.next_event()
    client = Connection(Role.CLIENT)
    client.receive_data(provision.RESPONSE_MAGIC)  # before we even asked
    with pytest.raises(RemoteProtocolError, match="not its turn"):
        client.next_event()


def test_data_after_eof_is_a_local_error() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after end of stream"):
        server.receive_data(b"x")


# -- local errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "prelude", "event"),
    [
        (Role.CLIENT, [], SecretResponse(KEY)),
        (Role.CLIENT, [SecretRequest()], SecretRequest()),
        (Role.SERVER, [], SecretResponse(KEY)),
        (Role.SERVER, [], SecretRequest()),
        (Role.CLIENT, [], Data(b"early")),
    ],
)
def test_sending_out_of_turn_is_local_error(role: Role, prelude: list[Any], event: Any) -> None:
    conn = Connection(role)
    for ev in prelude:
        conn.send(ev)
    with pytest.raises(LocalProtocolError, match="may not send"):
        conn.send(event)
    assert conn.state is State.ERROR


def test_bad_secret_sizes_and_arguments() -> None:
    server = Connection("server")
    server.receive_data(provision.REQUEST_MAGIC)
    server.next_event()
    with pytest.raises(LocalProtocolError, match="1.."):
        server.send(SecretResponse(b""))
    with pytest.raises(TypeError):
        SecretResponse("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, max_secret_size=0)
    with pytest.raises(ValueError):
        Connection("middlebox")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ProtocolError("abstract")
    assert KEY.hex() not in repr(SecretResponse(KEY)) and str(KEY) not in repr(SecretResponse(KEY))


# -- secret encodings and the server list ----------------------------------------------------------


def test_encode_decode_secret() -> None:
    assert provision.encode_secret(KEY) == KEY
    assert provision.encode_secret(KEY, "raw") == KEY
    assert provision.decode_secret(KEY, "raw") == KEY
    with pytest.raises(ValueError, match="16 bytes"):
        provision.encode_secret(KEY[:15])
    with pytest.raises(ValueError, match="format"):
        provision.encode_secret(KEY, "base64")
    with pytest.raises(TypeError):
        provision.encode_secret("00" * 16)  # type: ignore[arg-type]
    with pytest.raises(provision.SecretFormatError, match="16-byte"):
        provision.decode_secret(KEY + b"\0", "raw")
    with pytest.raises(provision.SecretFormatError, match="hex"):
        provision.decode_secret(b"zz" * 16 + b"\0", "hex")
    with pytest.raises(provision.SecretFormatError, match="NUL"):
        provision.decode_secret(KEY.hex().encode() + b"\n", "hex")


def test_parse_servers() -> None:
    assert provision.parse_servers("a:1,b:2;c:3 d:4") == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    assert provision.parse_servers(" broker ,; broker:4433,,") == [("broker", 4433)]  # no port → skipped
    assert provision.parse_servers("x:http, y:99999, z:7") == [("z", 7)]
    assert provision.parse_servers(provision.DEFAULT_SERVERS) == [("localhost", 4433)]
    for bad in ("", "host", "[::1]:443", " , ; "):
        with pytest.raises(provision.ServerListError) as info:
            provision.parse_servers(bad)
        assert info.value.exit_code == 2


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.binary(max_size=300), st.integers(1, 64))
def test_round_trip_any_secret(secret: bytes, app: bytes, step: int) -> None:
    client = Connection(Role.CLIENT, max_secret_size=5000)
    server = Connection(Role.SERVER)
    assert _feed(server, client.send(SecretRequest()), step) == [SecretRequest()]
    wire = server.send(SecretResponse(secret)) + (server.send(Data(app)) if app else b"")
    got = _feed(client, wire, step)
    assert got[0] == SecretResponse(secret)
    assert b"".join(ev.data for ev in got[1:]) == app


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([Role.CLIENT, Role.SERVER]), st.booleans())
def test_garbage_gives_only_protocol_errors(data: bytes, role: Role, eof: bool) -> None:
    conn = Connection(role, max_secret_size=100)
    if role is Role.CLIENT:
        conn.send(SecretRequest())
    try:
        conn.receive_data(data)
        if eof:
            conn.receive_data(b"")
        for _ in range(5):
            ev = conn.next_event()
            if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
                break
    except RemoteProtocolError:
        assert conn.state is State.ERROR


def test_error_tree_and_exports() -> None:
    for cls in (
        LocalProtocolError, RemoteProtocolError, provision.ProvisionDenied, provision.ProvisionTLSError,
        provision.ProvisionConnectError, provision.ProvisionTimeout, provision.ServerListError,
        provision.SecretFormatError,
    ):  # fmt: skip
        assert issubclass(cls, provision.ProvisionError) and issubclass(cls, TeeserveError)
    assert issubclass(LocalProtocolError, ProtocolError) and issubclass(RemoteProtocolError, ProtocolError)
    public = {n for n in dir(provision) if not n.startswith("_")} - {"annotations"}
    assert set(provision.__all__) == public
