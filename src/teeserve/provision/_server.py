"""The verifier side of secret provisioning: a pyOpenSSL + threads shell over :class:`Connection`.

Strategy (gramine-formats.md §2.1, §2.5, §2.6): the stdlib ``ssl`` module cannot request a client
certificate and then accept an untrusted self-signed one, so the server uses pyOpenSSL with a verify
callback that accepts the depth-0 certificate only (any chain certificate makes the handshake fail,
as in Gramine). After the handshake the server reads exactly the 35-byte request, hands the client
certificate to the injected ``authorize`` (which verifies the RA-TLS evidence and applies policy) and
sends the secret only if it returns one. A refused client learns nothing: the session is closed
without a byte of protocol data; the reason is logged locally.

Resources: at most ``max_clients`` sessions at a time (a semaphore taken *before* accept, so excess
connections wait in the kernel backlog); each session has a deadline for the handshake and one for
reading the request, so a silent or slow client frees its slot after ``timeout`` seconds. Sockets are
non-blocking and every pyOpenSSL call is retried under ``poll`` until its deadline.
"""

from __future__ import annotations

import contextlib

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ._connection import NEED_DATA, Connection, MAX_SECRET_SIZE
from ._errors import ProtocolError, ProvisionError
from ._events import ConnectionClosed, Data, SecretRequest, SecretResponse
from ._state import Role

__all__ = ["ProvisionServer", "ServerSession", "Authorize", "server_context", "DEFAULT_PORT"]

log = logging.getLogger("teeserve.provision")

DEFAULT_PORT = 4433
#: ``authorize(peer_cert_der, (host, port))`` → the secret to send, or None to refuse.
Authorize = Callable[[bytes, tuple[str, int]], "bytes | None"]

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class _Deadline(Exception):
    """A session step ran past its deadline (internal; the session is dropped)."""


class _Dropped(Exception):
    """The session ends now without another byte (internal)."""


def _verify_depth_zero(conn: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int) -> bool:
    # Gramine's callback: only the leaf (depth 0), whose trust and dates are deliberately ignored;
    # the RA-TLS evidence inside it is checked by ``authorize`` after the handshake.
    return depth == 0


def server_context(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    min_version: str = "1.2",
    max_version: str | None = None,
) -> SSL.Context:
    """A TLS server context with an ordinary certificate/key that *requires* a client certificate.

    Raises:
        ProvisionError: unreadable or mismatched certificate/key, or an unknown TLS version.
    """
    if min_version not in _TLS_VERSIONS or (max_version is not None and max_version not in _TLS_VERSIONS):
        raise ProvisionError(f"TLS versions must be one of {sorted(_TLS_VERSIONS)}")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_TLS_VERSIONS[min_version])
    if max_version is not None:
        ctx.set_max_proto_version(_TLS_VERSIONS[max_version])
    try:
        ctx.use_certificate_chain_file(os.fspath(cert_path))
    except (SSL.Error, OSError) as exc:
        raise ProvisionError(f"{os.fspath(cert_path)}: cannot load the server certificate: {exc}") from exc
    try:
        ctx.use_privatekey_file(os.fspath(key_path))
        ctx.check_privatekey()
    except (SSL.Error, OSError) as exc:
        raise ProvisionError(
            f"{os.fspath(key_path)}: cannot load the server key (or it does not match the certificate)"
        ) from exc
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_depth_zero)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    return ctx


class ServerSession:
    """The TLS session after the secret was sent, for optional application traffic (message 4)."""

    def __init__(self, server: ProvisionServer, tls: SSL.Connection, conn: Connection, peer: tuple[str, int]):
        self._server = server
        self._tls = tls
        self._conn = conn
        self.peer = peer

    def send(self, data: bytes) -> None:
        """Send application bytes."""
        self._server._send_all(self._tls, self._conn.send(Data(data)), self._server._deadline())

    def deadline(self) -> float:
        """A ``time.monotonic()`` deadline ``timeout`` seconds from now (for :meth:`receive`)."""
        return self._server._deadline()

    def receive(self, deadline: float | None = None) -> bytes:
        """Receive application bytes; ``b""`` when the client closed the session. Waits until
        ``deadline`` (default: ``timeout`` seconds from now); a caller that reads one request in
        several pieces passes the same deadline to each read, so a client sending a byte at a
        time cannot hold the session for longer than ``timeout`` per request."""
        if deadline is None:
            deadline = self.deadline()
        while True:
            event = self._conn.next_event()
            if isinstance(event, Data):
                return event.data
            if isinstance(event, ConnectionClosed):
                return b""
            self._conn.receive_data(self._server._recv(self._tls, 65536, deadline))


class ProvisionServer:
    """Gramine-compatible secret-provisioning server (the key broker's front end).

    Args:
        host, port: where to listen (``port=0`` picks a free port; see :attr:`port` after :meth:`start`).
        cert_path, key_path: the server's ordinary TLS certificate (chain) and key, PEM.
        authorize: ``authorize(peer_cert_der, (host, port)) -> bytes | None``; called in a worker thread
            after a well-formed request; return the secret, or None to refuse. An exception counts as refusal.
        max_clients: sessions served at once; more wait in the listen backlog.
        max_per_address: sessions served at once for one client address (0, the default: no
            limit): with a limit, one host opening connections that never finish their handshake
            cannot take every slot (each is held up to ``timeout`` seconds). A connection over the
            limit is closed at once, before TLS. Off by default: TEEs behind one NAT, a proxy, or a
            test on loopback all come from one address.
        timeout: seconds allowed for the TLS handshake, and again for reading the request.
        min_tls, max_tls: ``"1.2"`` or ``"1.3"``.
        on_provisioned: optional ``callback(ServerSession)`` run after the secret is sent.
    """

    def __init__(
        self,
        host: str,
        port: int,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        authorize: Authorize,
        *,
        max_clients: int = 64,
        max_per_address: int = 0,
        timeout: float = 10.0,
        min_tls: str = "1.2",
        max_tls: str | None = None,
        on_provisioned: Callable[[ServerSession], None] | None = None,
        backlog: int = 128,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_per_address < 0:
            raise ValueError("max_per_address must be 0 (no limit) or positive")
        self.host = host
        self._requested_port = port
        self._ctx = server_context(cert_path, key_path, min_version=min_tls, max_version=max_tls)
        self._authorize = authorize
        self._on_provisioned = on_provisioned
        self.max_clients = max_clients
        self.timeout = timeout
        self._backlog = backlog
        self._slots = threading.BoundedSemaphore(max_clients)
        self.max_per_address = max_per_address
        self._per_address: dict[str, int] = {}  # sessions in progress by client address (_workers_lock)
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (valid after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("server not started")
        return int(self._listener.getsockname()[1])

    def start(self) -> ProvisionServer:
        """Bind and start accepting in a background thread; returns self."""
        if self._listener is not None:
            raise RuntimeError("server already started")
        try:
            self._listener = socket.create_server((self.host, self._requested_port), backlog=self._backlog)
        except OSError as exc:
            where = f"{self.host}:{self._requested_port}"
            raise ProvisionError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self._listener.settimeout(0.2)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="provision-accept", daemon=True)
        self._accept_thread.start()
        log.info("secret-provisioning server listening on %s:%d", self.host, self.port)
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`stop` is called from another thread or a signal."""
        if self._listener is None:
            self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self, wait: float = 5.0) -> None:
        """Stop accepting, let sessions in progress end (each is bounded by its deadlines)."""
        self._stopping.set()
        if self._accept_thread is not None and self._accept_thread is not threading.current_thread():
            self._accept_thread.join(wait)
        if self._listener is not None:
            self._listener.close()
        end = time.monotonic() + wait
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(max(0.0, end - time.monotonic()))

    def __enter__(self) -> ProvisionServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                sock, addr = self._listener.accept()
            except (TimeoutError, socket.timeout):
                self._slots.release()
                continue
            except OSError:
                self._slots.release()
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                time.sleep(0.1)
                continue
            host = addr[0]
            with self._workers_lock:
                busy = self._per_address.get(host, 0)
                over = bool(self.max_per_address) and busy >= self.max_per_address
                if not over:
                    self._per_address[host] = busy + 1
            if over:
                log.warning("provisioning: %s already has %d sessions in progress (the most one address may "
                            "have); connection from %s:%d closed", host, busy, *addr[:2])
                sock.close()
                self._slots.release()
                continue
            worker = threading.Thread(
                target=self._session, args=(sock, addr[:2]), name="provision-session", daemon=True
            )
            with self._workers_lock:
                self._workers.add(worker)
            try:
                worker.start()
            except RuntimeError:  # cannot start a thread: refuse this client, keep serving
                log.error("cannot start a session thread; dropping %s:%d", *addr[:2])
                with self._workers_lock:
                    self._workers.discard(worker)
                    self._leave(host)
                sock.close()
                self._slots.release()

    def _leave(self, host: str) -> None:
        """One session of ``host`` ended (caller holds ``_workers_lock``)."""
        left = self._per_address.get(host, 1) - 1
        if left > 0:
            self._per_address[host] = left
        else:
            self._per_address.pop(host, None)

    # -- one session -----------------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _wait(self, sock: Any, events: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), events)
        while True:
            if self._stopping.is_set():
                raise _Dropped("server stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline()
            if poller.poll(min(remaining, 0.25) * 1000):
                return

    def _retry(self, tls: SSL.Connection, call: Callable[[], Any], deadline: float) -> Any:
        while True:
            try:
                return call()
            except SSL.WantReadError:
                self._wait(tls, select.POLLIN, deadline)
            except SSL.WantWriteError:
                self._wait(tls, select.POLLOUT, deadline)

    def _recv(self, tls: SSL.Connection, n: int, deadline: float) -> bytes:
        try:
            data: bytes = self._retry(tls, lambda: tls.recv(n), deadline)
            return data
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 0):  # unexpected EOF
                return b""
            raise

    def _send_all(self, tls: SSL.Connection, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            sent = self._retry(tls, lambda: tls.send(view), deadline)
            view = view[sent:]

    def _session(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        tls: SSL.Connection | None = None
        where = f"{peer[0]}:{peer[1]}"
        try:
            # Messages 2 and 3 are two small records: without NODELAY, Nagle + delayed ACK stall each
            # session by ~40 ms (measured: 17 → 69 attestations/s).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            tls = SSL.Connection(self._ctx, sock)
            tls.set_accept_state()
            self._retry(tls, tls.do_handshake, self._deadline())
            self._serve(tls, peer, where)
            try:
                tls.shutdown()  # close_notify (also on refusal: no protocol byte, just the TLS close)
            except SSL.Error:
                pass
        except _Deadline:
            log.info("provisioning session %s: timed out after %.1f s, dropped", where, self.timeout)
        except _Dropped as exc:
            log.info("provisioning session %s: dropped (%s)", where, exc)
        except ProtocolError as exc:
            log.warning("provisioning session %s: protocol error, dropped: %s", where, exc)
        except (SSL.Error, OSError) as exc:
            log.info("provisioning session %s: TLS/connection error, dropped: %s", where, exc)
        except Exception:
            log.exception("provisioning session %s: unexpected error, dropped", where)
        finally:
            if tls is not None:
                try:
                    tls.set_shutdown(SSL.SENT_SHUTDOWN)  # no blocking close_notify exchange
                except SSL.Error:
                    pass
            sock.close()
            self._slots.release()
            with self._workers_lock:
                self._workers.discard(threading.current_thread())
                self._leave(peer[0])

    def _serve(self, tls: SSL.Connection, peer: tuple[str, int], where: str) -> None:
        chain = tls.get_peer_cert_chain(as_cryptography=True) or []
        cert = tls.get_peer_certificate(as_cryptography=True)
        if cert is None:
            raise _Dropped("no client certificate")
        # OpenSSL leaves the leaf out of the server-side chain; count anything else the client sent.
        extra = [c for c in chain if c != cert]
        if extra:
            raise _Dropped(f"client sent {len(extra)} extra certificate(s); only the RA-TLS one is allowed")
        conn = Connection(Role.SERVER)
        deadline = self._deadline()
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                conn.receive_data(self._recv(tls, conn.bytes_needed or 1, deadline))
                continue
            if isinstance(event, SecretRequest):
                break
            raise _Dropped("client closed the session before sending a request")
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        try:
            secret = self._authorize(cert_der, peer)
        except Exception:
            log.exception("provisioning session %s: authorize failed; refusing", where)
            secret = None
        if secret is None:
            log.info("provisioning session %s: refused", where)
            return
        if not isinstance(secret, bytes) or not 1 <= len(secret) <= MAX_SECRET_SIZE:
            log.error("provisioning session %s: authorize returned an unusable secret; refusing", where)
            return
        deadline = self._deadline()
        for record in conn.send_records(SecretResponse(secret)):
            self._send_all(tls, record, deadline)
        log.info("provisioning session %s: secret released", where)
        if self._on_provisioned is not None:
            self._on_provisioned(ServerSession(self, tls, conn, peer))
