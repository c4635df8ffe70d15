"""Client and server over real TLS on 127.0.0.1: the full RA-TLS secret-provisioning exchange with the
simulated TEE, denials, CA and host-name checks, malformed and slow clients, concurrency, TLS 1.2/1.3."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from teeserve import provision
from teeserve.attest import ratls, sim
from teeserve.attest.evidence import SimProvider

from _provision_helpers import MR_ENCLAVE, WRAP_KEY, Authorizer, Pki, forge_ratls


def fetch(server: provision.ProvisionServer, pki: Pki, creds: Any, **kw: Any) -> bytes:
    servers = kw.pop("servers", f"127.0.0.1:{server.port}")
    ca = kw.pop("ca_path", pki.ca_path)
    return asyncio.run(provision.fetch_secret(servers, ca, creds, timeout=kw.pop("timeout", 10), **kw))


def raw_tls_client(
    port: int, pki: Pki, creds: Any, tmp_path: Path, extra_chain: bytes = b""
) -> ssl.SSLSocket:
    """A stdlib TLS client presenting ``creds`` (plus optional extra chain certificates)."""
    cert = tmp_path / "client.pem"
    key = tmp_path / "client.key"
    cert.write_bytes(creds.cert_pem + extra_chain)
    key.write_bytes(creds.key_pem)
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    ctx.load_cert_chain(str(cert), str(key))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def recv_all(sock: ssl.SSLSocket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ssl.SSLError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


# -- the positive path -----------------------------------------------------------------------------


def test_full_exchange(server_factory, pki: Pki, credentials, authorizer: Authorizer) -> None:
    server = server_factory()
    assert fetch(server, pki, credentials) == WRAP_KEY
    (cert_der, peer), = authorizer.calls
    assert cert_der == credentials.cert_der  # the server saw exactly the client's RA-TLS certificate
    assert peer[0] == "127.0.0.1" and isinstance(peer[1], int)
    assert authorizer.denials == []


def test_by_host_name_and_fallback_to_next_server(server_factory, pki: Pki, credentials) -> None:
    server = server_factory()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    servers = f"127.0.0.1:{dead_port}, noport ;localhost:{server.port}"
    assert fetch(server, pki, credentials, servers=servers) == WRAP_KEY
    with pytest.raises(provision.ProvisionConnectError, match=str(dead_port)):
        fetch(server, pki, credentials, servers=f"127.0.0.1:{dead_port}")


@pytest.mark.parametrize(
    ("max_tls", "min_tls", "expected"), [("1.2", "1.2", "TLSv1.2"), (None, "1.3", "TLSv1.3")]
)
@pytest.mark.parametrize("fmt", ["raw", "hex"])
def test_tls_versions_and_secret_formats(
    server_factory, pki, credentials, authorizer, max_tls, min_tls, expected, fmt
) -> None:
    authorizer.secret = provision.encode_secret(WRAP_KEY, fmt)
    server = server_factory(min_tls=min_tls, max_tls=max_tls)

    async def run() -> tuple[bytes, str | None]:
        async with provision.open_session(f"127.0.0.1:{server.port}", pki.ca_path, credentials) as session:
            return session.secret, session.tls_version

    secret, version = asyncio.run(run())
    assert version == expected
    assert secret == authorizer.secret and provision.decode_secret(secret, fmt) == WRAP_KEY


def test_each_ratls_key_type(server_factory, pki, sim_provider) -> None:
    server = server_factory()
    for key_type in ("ec-p256", "rsa-3072"):
        creds = ratls.make_certificate(sim_provider, key_type=key_type, dice=(key_type != "rsa-3072"))
        assert fetch(server, pki, creds) == WRAP_KEY


def test_application_traffic_after_the_secret(server_factory, pki, credentials) -> None:
    def echo(session: provision.ServerSession) -> None:
        while data := session.receive():
            session.send(data.upper())

    server = server_factory(on_provisioned=echo)

    async def run() -> bytes:
        async with provision.open_session(f"127.0.0.1:{server.port}", pki.ca_path, credentials) as session:
            assert session.secret == WRAP_KEY
            await session.send(b"ping")
            return await session.receive()

    assert asyncio.run(run()) == b"PING"


def test_twenty_concurrent_clients(server_factory, pki, sim_provider, authorizer) -> None:
    server = server_factory(max_clients=8)
    creds = [ratls.make_certificate(sim_provider, key_type="ec-p256") for _ in range(20)]

    async def run() -> list[bytes]:
        return await asyncio.gather(
            *(provision.fetch_secret(f"127.0.0.1:{server.port}", pki.ca_path, c, timeout=30) for c in creds)
        )

    assert asyncio.run(run()) == [WRAP_KEY] * 20
    assert len(authorizer.calls) == 20
    assert {c for c, _ in authorizer.calls} == {c.cert_der for c in creds}


# -- refusals --------------------------------------------------------------------------------------


def test_denied_client_gets_clear_error_and_no_bytes(server_factory, pki, credentials, authorizer) -> None:
    authorizer.secret = None
    server = server_factory()
    with pytest.raises(provision.ProvisionDenied, match="without sending a secret"):
        fetch(server, pki, credentials)
    assert len(authorizer.calls) == 1


def test_quote_not_bound_to_tls_key_is_denied(server_factory, pki, sim_provider, authorizer) -> None:
    # A certificate for key A carrying a quote made for key B: the broker's check refuses it.
    genuine = ratls.make_certificate(sim_provider, dice=False)
    stolen_quote = ratls.extract_quote(genuine.cert_der)
    key = ec.generate_private_key(ec.SECP384R1())
    forged = forge_ratls(key, stolen_quote)
    server = server_factory()
    with pytest.raises(provision.ProvisionDenied):
        fetch(server, pki, forged)
    assert authorizer.denials == ["KeyBindingMismatch"]


def test_simulated_quote_from_untrusted_key_is_denied(server_factory, pki, tmp_path, authorizer) -> None:
    rogue = SimProvider(sim.init_key(tmp_path / "rogue")[0], mr_enclave=MR_ENCLAVE)
    server = server_factory()
    with pytest.raises(provision.ProvisionDenied):
        fetch(server, pki, ratls.make_certificate(rogue))
    assert authorizer.denials == ["UntrustedSimulationKey"]


def test_simulation_not_enabled_is_denied(server_factory, pki, credentials, authorizer) -> None:
    authorizer.trusted = []  # the broker trusts no simulation key: SIMULATED quotes are refused
    server = server_factory()
    with pytest.raises(provision.ProvisionDenied):
        fetch(server, pki, credentials)
    assert authorizer.denials == ["SimulationNotAllowed"]


def test_wrong_ca_on_client(server_factory, pki, credentials, authorizer) -> None:
    server = server_factory()
    with pytest.raises(provision.ProvisionTLSError, match="certificate"):
        fetch(server, pki, credentials, ca_path=pki.other_ca_path)
    assert authorizer.calls == []


def test_host_name_mismatch(server_factory, pki, credentials, authorizer) -> None:
    server = server_factory(cert_path=pki.wrong_name_cert, key_path=pki.wrong_name_key)
    with pytest.raises(provision.ProvisionTLSError, match="(?i)hostname|IP address mismatch"):
        fetch(server, pki, credentials)
    with pytest.raises(provision.ProvisionTLSError):
        fetch(server, pki, credentials, servers=f"localhost:{server.port}")
    assert authorizer.calls == []


def test_wrong_request_magic_is_dropped(server_factory, pki, credentials, authorizer, tmp_path) -> None:
    server = server_factory()
    with raw_tls_client(server.port, pki, credentials, tmp_path) as sock:
        sock.sendall(b"SECRET_PROVISION_RA_TLS_REQUEST_V2\x00")
        assert recv_all(sock) == b""
    assert authorizer.calls == []  # never authorized, nothing sent
    assert fetch(server, pki, credentials) == WRAP_KEY  # and the server still serves


def test_oversize_and_garbage_clients_do_not_harm_others(
    server_factory, pki, credentials, authorizer, tmp_path
) -> None:
    server = server_factory()
    with raw_tls_client(server.port, pki, credentials, tmp_path) as sock:
        try:
            sock.sendall(provision.REQUEST_MAGIC[:10] + b"X" * 100_000)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass  # dropped while we were still writing
        assert recv_all(sock) == b""
    with socket.create_connection(("127.0.0.1", server.port)) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        plain.settimeout(10)
        try:
            data = plain.recv(4096)  # a TLS alert at most
        except ConnectionResetError:
            data = b""
        assert b"SECRET" not in data
    assert authorizer.calls == []
    assert fetch(server, pki, credentials) == WRAP_KEY


def test_client_secret_limit(server_factory, pki, credentials, authorizer) -> None:
    authorizer.secret = b"s" * 5000
    server = server_factory()
    with pytest.raises(provision.RemoteProtocolError, match="5000-byte secret"):
        fetch(server, pki, credentials, max_secret=4096)
    assert fetch(server, pki, credentials, max_secret=5000) == b"s" * 5000


def test_extra_chain_certificates_refused(server_factory, pki, credentials, authorizer, tmp_path) -> None:
    server = server_factory()
    extra = pki.ca_cert.public_bytes(serialization.Encoding.PEM)
    try:
        with raw_tls_client(server.port, pki, credentials, tmp_path, extra_chain=extra) as sock:
            sock.sendall(provision.REQUEST_MAGIC)
            assert recv_all(sock) == b""
    except (ssl.SSLError, ConnectionResetError):
        pass  # refused during the handshake: fine too
    assert authorizer.calls == []


def test_client_without_certificate_refused(server_factory, pki, authorizer) -> None:
    server = server_factory()

    async def run() -> bytes:
        async with provision.open_session(f"127.0.0.1:{server.port}", pki.ca_path, None, timeout=10) as s:
            return s.secret

    with pytest.raises(provision.ProvisionError):
        asyncio.run(run())
    assert authorizer.calls == []


# -- slow clients and bounded concurrency ----------------------------------------------------------


def test_silent_client_does_not_block_others(server_factory, pki, credentials) -> None:
    server = server_factory(max_clients=4, timeout=30)
    with socket.create_connection(("127.0.0.1", server.port)) as silent:
        assert fetch(server, pki, credentials) == WRAP_KEY
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):
            silent.recv(1)  # still connected and waiting: it did not hold anyone up


def test_max_per_address_closes_one_hosts_excess_connections_before_tls(server_factory, pki, credentials,
                                                                         caplog) -> None:
    """One host holding connections open without a handshake could take every slot; with a limit per
    address its excess connections are closed at once and another address is still served."""
    server = server_factory(max_clients=4, max_per_address=2, timeout=30)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while sum(server._per_address.values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", server.port)) as excess:
            excess.settimeout(10)
            assert excess.recv(1) == b""  # closed by the server, before any TLS byte
        assert "127.0.0.1 already has 2 sessions in progress" in caplog.text
        other = socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.2", 0))
        with other:
            time.sleep(0.3)
            other.setblocking(False)
            with pytest.raises(BlockingIOError):
                other.recv(1)  # accepted and waiting for its ClientHello: another address is served
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while server._per_address and time.monotonic() < deadline:  # the sessions end with their sockets
        time.sleep(0.05)
    assert fetch(server, pki, credentials) == WRAP_KEY
    deadline = time.monotonic() + 10
    while server._per_address and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server._per_address == {}  # every session counted out again


def test_slow_client_frees_its_slot_after_timeout(server_factory, pki, credentials, tmp_path) -> None:
    # one slot only: a client that never sends its ClientHello, then one that stalls after the handshake
    server = server_factory(max_clients=1, timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)):
        assert fetch(server, pki, credentials) == WRAP_KEY
    with raw_tls_client(server.port, pki, credentials, tmp_path) as stalled:
        stalled.sendall(provision.REQUEST_MAGIC[:5])  # ... and nothing more
        assert fetch(server, pki, credentials) == WRAP_KEY
        assert recv_all(stalled) == b""  # it was dropped without a secret


def test_authorize_exception_means_refusal(server_factory, pki, credentials, caplog) -> None:
    def boom(cert: bytes, peer: tuple[str, int]) -> bytes | None:
        raise RuntimeError("policy store unavailable")

    server = server_factory(authorize=boom)
    with pytest.raises(provision.ProvisionDenied):
        fetch(server, pki, credentials)


def test_no_secret_bytes_in_logs(server_factory, pki, credentials, caplog) -> None:
    server = server_factory()
    with caplog.at_level(logging.DEBUG):
        assert fetch(server, pki, credentials) == WRAP_KEY
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "secret released" in text
    for form in (WRAP_KEY.hex(), WRAP_KEY.hex().upper(), repr(WRAP_KEY), str(WRAP_KEY)):
        assert form not in text


def test_server_setup_errors(pki, tmp_path, authorizer) -> None:
    with pytest.raises(provision.ProvisionError, match="server certificate"):
        provision.ProvisionServer("127.0.0.1", 0, tmp_path / "none.pem", pki.server_key, authorizer)
    with pytest.raises(provision.ProvisionError, match="server key"):
        provision.ProvisionServer("127.0.0.1", 0, pki.server_cert, pki.wrong_name_key, authorizer)
    with pytest.raises(ValueError):
        provision.ProvisionServer("127.0.0.1", 0, pki.server_cert, pki.server_key, authorizer, max_clients=0)
    with provision.ProvisionServer("127.0.0.1", 0, pki.server_cert, pki.server_key, authorizer) as server:
        port = server.port
        with pytest.raises(provision.ProvisionError, match="cannot listen"):
            provision.ProvisionServer("127.0.0.1", port, pki.server_cert, pki.server_key, authorizer).start()


def test_serve_forever_until_stopped(pki, authorizer, credentials) -> None:
    server = provision.ProvisionServer("127.0.0.1", 0, pki.server_cert, pki.server_key, authorizer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while server._listener is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fetch(server, pki, credentials) == WRAP_KEY
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


# -- the enclave-side conveniences -----------------------------------------------------------------


def test_client_from_env_installs_key(server_factory, pki, credentials, tmp_path) -> None:
    server = server_factory()
    root = tmp_path / "attestation"
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "default").write_bytes(b"")
    env = {
        "SECRET_PROVISION_SERVERS": f"127.0.0.1:{server.port}",
        "SECRET_PROVISION_CA_CHAIN_PATH": str(pki.ca_path),
        "SECRET_PROVISION_SET_KEY": "default",
    }
    client = provision.client_from_env(env, attestation_root=str(root))
    assert client.set_key == "default" and client.servers == env["SECRET_PROVISION_SERVERS"]
    assert asyncio.run(client.provision(credentials)) == WRAP_KEY
    assert (root / "keys" / "default").read_bytes() == WRAP_KEY


def test_client_from_env_defaults_and_errors(pki) -> None:
    c = provision.client_from_env({"SECRET_PROVISION_CA_CHAIN_PATH": "/ca.pem"})
    assert (c.servers, c.ca_path, c.set_key) == ("localhost:4433", "/ca.pem", None)
    env = {"SECRET_PROVISION_CA_CHAIN_PATH": "/ca", "SECRET_PROVISION_SET_PF_KEY": "1"}
    legacy = provision.client_from_env(env)
    assert legacy.set_key == "default"
    with pytest.raises(provision.ProvisionError, match="SECRET_PROVISION_CA_CHAIN_PATH"):
        provision.client_from_env({})


def test_set_key_requires_16_raw_bytes(server_factory, pki, credentials, authorizer, tmp_path) -> None:
    authorizer.secret = provision.encode_secret(WRAP_KEY, "hex")
    server = server_factory()
    root = tmp_path / "att"
    (root / "keys").mkdir(parents=True)
    (root / "keys" / "default").write_bytes(b"")
    client = provision.ProvisionClient(f"127.0.0.1:{server.port}", str(pki.ca_path), "default", str(root))
    with pytest.raises(provision.SecretFormatError, match="16-byte"):
        asyncio.run(client.provision(credentials))
    assert (root / "keys" / "default").read_bytes() == b""


def test_write_key_to_gramine(tmp_path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "model").write_bytes(b"")
    provision.write_key_to_gramine(WRAP_KEY, "model", root=tmp_path)
    assert (tmp_path / "keys" / "model").read_bytes() == WRAP_KEY


def test_client_key_is_loaded_from_memory(credentials, pki, monkeypatch) -> None:
    # the RA-TLS key reaches OpenSSL through /proc/self/fd/N of an anonymous memory file
    seen: list[str] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None, password: Any = None) -> None:
        import os

        seen.append(os.readlink(keyfile))  # type: ignore[arg-type]
        real(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    provision.client_context(pki.ca_path, credentials)
    assert len(seen) == 1 and seen[0].startswith("/memfd:ratls-key")


def test_ca_file_problems(tmp_path, credentials) -> None:
    with pytest.raises(provision.ProvisionError, match="cannot read the CA file"):
        provision.client_context(tmp_path / "missing.pem", credentials)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(provision.ProvisionError, match="not a PEM or DER"):
        provision.client_context(bad, credentials)


def test_der_ca_file(server_factory, pki, credentials, tmp_path) -> None:
    der = tmp_path / "ca.der"
    ca = x509.load_pem_x509_certificate(pki.ca_path.read_bytes())
    der.write_bytes(ca.public_bytes(serialization.Encoding.DER))
    server = server_factory()
    assert fetch(server, pki, credentials, ca_path=der) == WRAP_KEY


def test_no_fallback_after_tls_failure(server_factory, pki, credentials, authorizer) -> None:
    # Gramine tries the next server only when the TCP connect fails, never after a TLS failure.
    wrong = server_factory(cert_path=pki.wrong_name_cert, key_path=pki.wrong_name_key)
    good = server_factory()
    with pytest.raises(provision.ProvisionTLSError):
        fetch(good, pki, credentials, servers=f"127.0.0.1:{wrong.port},127.0.0.1:{good.port}")
    assert authorizer.calls == []


def test_client_times_out_on_a_mute_server(pki, credentials) -> None:
    with socket.create_server(("127.0.0.1", 0)) as mute:  # accepts TCP (backlog), never speaks TLS
        port = mute.getsockname()[1]
        with pytest.raises(provision.ProvisionTimeout, match="TLS handshake"):
            asyncio.run(provision.fetch_secret(f"127.0.0.1:{port}", pki.ca_path, credentials, timeout=0.5))
