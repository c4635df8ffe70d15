"""Helpers for the TLS material tests: a real TLS exchange on 127.0.0.1 (a stdlib ssl server in a
thread, a stdlib ssl client), and the requester's client context."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

SERVER_CN = "grpc.tf-serving.service.com"
CLIENT_CN = "client.tf-serving.service.com"


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """What a requester does: trust the owner's CA, present the client certificate if it has one."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


@dataclass
class Exchange:
    reply: bytes | None = None
    client_error: BaseException | None = None
    server_error: BaseException | None = None
    peer_cert: dict | None = None  # the client certificate as the server saw it
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.reply == b"echo:ping" and self.client_error is None and self.server_error is None


def tls_exchange(
    server_context: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> Exchange:
    """One TLS connection on 127.0.0.1: the client sends b"ping", the server answers b"echo:ping"."""
    result = Exchange()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_context.wrap_socket(conn, server_side=True) as tls:
                data = tls.recv(1024)
                result.peer_cert = tls.getpeercert()
                result.version = tls.version()
                tls.sendall(b"echo:" + data)
        except (ssl.SSLError, OSError) as exc:
            result.server_error = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"ping")
                result.reply = tls.recv(1024)
    except (ssl.SSLError, OSError) as exc:
        result.client_error = exc
    finally:
        thread.join(15)
        listener.close()
    assert not thread.is_alive(), "TLS server thread hung"
    return result


def peer_cn(peer_cert: dict | None) -> str | None:
    if not peer_cert:
        return None
    for rdn in peer_cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
