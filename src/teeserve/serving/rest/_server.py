"""The REST front end's HTTP/1.1 server: asyncio + httptools, TLS by ``ssl.SSLContext``.

Strategy: a thin I/O shell. ``httptools`` (llhttp) parses requests; each connection is an
``asyncio.Protocol`` that collects one request (method, path, body), hands it to
:class:`~._handler.RestHandler` and writes the response back. Everything REST-specific lives in the
handler and the codec.

HTTP behaviour:

- HTTP/1.1 keep-alive (and HTTP/1.0 with ``Connection: keep-alive``); pipelined requests are answered in
  order, one at a time per connection.
- Bodies by ``Content-Length`` or chunked transfer coding. A body larger than ``max_body_bytes`` is
  refused with **413** as soon as that is known (from ``Content-Length`` before any body byte is read,
  or once the chunks pass the limit), and the connection is closed; nothing beyond the limit is
  buffered. ``Expect: 100-continue`` is answered, so ``curl`` sends large bodies without a pause.
- ``Content-Encoding: gzip`` bodies are inflated as they arrive, as TF Serving's net_http does; the
  limit applies to the inflated size (a zip bomb stops at the limit with 413); a corrupt or truncated
  gzip body is 400. Other codings are passed on as they are.
- ``Upgrade`` (``curl --http2`` sends ``Upgrade: h2c``) is ignored, as HTTP/1.1 allows and TF Serving's
  libevent server does: the request is served as plain HTTP/1.1, never 101.
- A request line + headers longer than ``max_header_bytes`` get 431; unparseable HTTP gets 400; both
  close the connection, after the answers to the requests before them. A keep-alive connection idle
  for ``idle_timeout`` seconds, a request whose headers have not all arrived after that long
  (slow-loris), or a body upload that stalls that long, is closed; a body that keeps arriving, however
  slowly, is not cut off (``--rest_api_timeout_in_ms`` bounds only the model's work).
- TLS: with ``ssl_context`` the server speaks only HTTPS; a context with ``verify_mode =
  CERT_REQUIRED`` (``ssl.cfg`` ``client_verify: true``) refuses any client without a certificate
  signed by the configured CA during the handshake (TF Serving leaves REST in plaintext; teeserve
  does not, tensorflow/serving#1503).
- :meth:`RestServer.close` stops accepting, closes idle keep-alive connections, lets in-flight requests
  finish (answered with ``Connection: close``) for up to ``grace`` seconds, then aborts the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httptools

from .._api import ServingCoreAPI
from .._metrics import METRICS, Metrics
from .._types import Code
from ._handler import DEFAULT_OFFLOAD_BYTES, RestHandler, Response, error_response

__all__ = [
    "RestServer",
    "start_rest_server",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_IDLE_TIMEOUT",
]

log = logging.getLogger("teeserve.serving.rest")

#: Largest request body accepted by default (64 MiB); TF Serving has no limit of its own.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Idle keep-alive connections, headers still arriving and stalled uploads are closed after this many
#: seconds.
DEFAULT_IDLE_TIMEOUT = 75.0
#: Largest request line + headers accepted.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
# Pause reading from a connection when this many parsed requests wait for their turn.
_MAX_PIPELINE = 16
# zlib window bits for a gzip wrapper (16 + the largest window).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_BAD_GZIP = "Failed to uncompress the gzipped request body (Content-Encoding: gzip): corrupt or truncated"

_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    409: b"Conflict", 413: b"Payload Too Large", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    499: b"Client Closed Request", 500: b"Internal Server Error", 501: b"Not Implemented",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}


class _Request:
    __slots__ = ("method", "path", "body", "keep_alive", "http10", "response")

    def __init__(self, method: str, path: str, body: bytes, keep_alive: bool, http10: bool,
                 response: Response | None = None) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        #: An answer decided while parsing (a refusal, a corrupt gzip body): sent in turn, not handled.
        self.response = response


class _Refuse(Exception):
    """Stop parsing this connection and answer ``response`` before closing it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server: RestServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        # Parsing stopped for good (a refusal is queued behind the answers still owed).
        self.refused = False
        self.busy = False
        self.last_active = time.monotonic()
        self.in_message = False
        self.message_started = 0.0
        # A request that asked for an Upgrade and has a body: llhttp skipped that body (_after_upgrade).
        self.upgrade_req: _Request | None = None
        self.paused = False
        self.closing_after_queue = False
        self.write_ok = asyncio.Event()
        self.write_ok.set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.header_bytes = 0
        self.content_length = -1
        self.expect_continue = False
        self.chunked = False
        self.gzip = False
        self.inflater: Any = None
        self.body_error: Response | None = None
        self.headers_done = False
        self.body_parts: list[bytes] = []
        self.body_size = 0

    # --- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.closing = True
        self.write_ok.set()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def pause_writing(self) -> None:
        self.write_ok.clear()

    def resume_writing(self) -> None:
        self.write_ok.set()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.refused:
            return
        # Any bytes count as activity: a slow but steady upload is not idle (expired()).
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except _Refuse as refuse:
            self._refuse(refuse.response)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data, upgrade.args[0])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refuse):
                self._refuse(exc.__context__.response)
            else:
                self._refuse(error_response(Code.INVALID_ARGUMENT, "Malformed HTTP request"))

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stopped after a request with ``Upgrade`` (or ``CONNECT``) as if the rest of the stream
        were another protocol. HTTP/1.1 lets a server ignore Upgrade, and TF Serving's libevent does:
        carry on parsing HTTP/1.1. llhttp skipped the request's body, so when one was announced it is
        framed by a made-up message that on_message_complete joins to the saved request."""
        while True:
            self.parser = httptools.HttpRequestParser(self)  # the old one is left in its upgrade state
            req = self.upgrade_req
            rest = data[offset:]
            try:
                if req is not None:
                    framing = (b"Transfer-Encoding: chunked\r\n" if self.chunked
                               else b"Content-Length: %d\r\n" % self.content_length)
                    coding = b"Content-Encoding: gzip\r\n" if self.gzip else b""
                    self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + coding + b"\r\n")
                if rest:
                    self.parser.feed_data(rest)
                return
            except httptools.HttpParserUpgrade as upgrade:  # another one, pipelined in the same data
                data, offset = rest, upgrade.args[0]
            except _Refuse as refuse:
                self._refuse(refuse.response)
                return
            except httptools.HttpParserError as exc:
                if isinstance(exc.__context__, _Refuse):
                    self._refuse(exc.__context__.response)
                else:
                    self._refuse(error_response(Code.INVALID_ARGUMENT, "Malformed HTTP request"))
                return

    def eof_received(self) -> bool | None:
        # Half-closed by the client: finish what is queued, then close.
        if self.worker is None and not self.pending:
            return None
        self.closing_after_queue = True
        if self.transport is not None and self.transport.get_extra_info("sslcontext") is not None:
            return None  # TLS cannot stay half-open (asyncio closes the transport)
        return True

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.in_message = True
        self.message_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.server.max_header_bytes:
            raise _Refuse(Response(431, b'{"error":"Request header fields too large"}'))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.server.max_header_bytes:
            raise _Refuse(Response(431, b'{"error":"Request header fields too large"}'))
        lname = name.lower()
        if lname == b"content-length":
            try:
                self.content_length = int(value)
            except ValueError:
                raise _Refuse(error_response(Code.INVALID_ARGUMENT, "Malformed HTTP request")) from None
        elif lname == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif lname == b"content-encoding":
            # TF Serving inflates when the header contains "gzip" (net_http's auto_uncompress_input).
            self.gzip = b"gzip" in value.lower()
        elif lname == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()  # needed only to frame an Upgrade request's body

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.content_length > self.server.max_body_bytes:
            raise _Refuse(self._too_large())
        if self.expect_continue and self.transport is not None and self.parser.get_http_version() == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.gzip:
            self._inflate(body)
            return
        self.body_size += len(body)
        if self.body_size > self.server.max_body_bytes:
            raise _Refuse(self._too_large())
        self.body_parts.append(body)

    def _inflate(self, data: bytes) -> None:
        """Inflate a gzip body as it arrives, never more than the body limit plus one byte per call."""
        if self.body_error is not None:
            return  # already known to be corrupt: the rest is skipped
        limit = self.server.max_body_bytes
        d = self.inflater
        try:
            while data:
                if d is None or d.eof:  # the first gzip member, or the next of concatenated ones
                    d = self.inflater = zlib.decompressobj(_GZIP_WBITS)
                out = d.decompress(data, limit - self.body_size + 1)
                if out:
                    self.body_size += len(out)
                    if self.body_size > limit:
                        raise _Refuse(self._too_large())
                    self.body_parts.append(out)
                # Input is left over only after the end of a member (running out of room refused above).
                data = d.unused_data if d.eof else b""
        except zlib.error:
            self.body_error = error_response(Code.INVALID_ARGUMENT, _BAD_GZIP)
            self.body_parts = []

    def on_message_complete(self) -> None:
        parser = self.parser
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.upgrade_req is not None:  # the made-up message that framed an Upgrade request's body
            req, self.upgrade_req = self.upgrade_req, None
            req.body = body
        else:
            try:
                path = httptools.parse_url(self.url).path.decode("latin-1")
            except httptools.HttpParserInvalidURLError:
                raise _Refuse(error_response(Code.INVALID_ARGUMENT, "Malformed request URL")) from None
            req = _Request(parser.get_method().decode("latin-1"), path, body, parser.should_keep_alive(),
                           parser.get_http_version() == "1.0")
            if not parts and (self.content_length > 0 or self.chunked) and parser.should_upgrade():
                # llhttp skipped the body of this Upgrade request: _after_upgrade frames it next.
                self.upgrade_req = req
                return
        if self.gzip and self.body_error is None and self.inflater is not None and not self.inflater.eof:
            self.body_error = error_response(Code.INVALID_ARGUMENT, _BAD_GZIP)  # truncated
        if self.body_error is not None:
            req.response = self.body_error
            req.body = b""
        self._reset()
        self.in_message = False
        self.pending.append(req)
        if len(self.pending) >= _MAX_PIPELINE and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    def _too_large(self) -> Response:
        limit = self.server.max_body_bytes
        return Response(413, b'{"error":"Request body is larger than the limit of %d bytes"}' % limit)

    # --- responses -----------------------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while self.pending and not self.closing:
                req = self.pending.popleft()
                if self.paused and self.transport is not None and len(self.pending) < _MAX_PIPELINE // 2:
                    self.paused = False
                    self.transport.resume_reading()
                response = req.response
                if response is None:
                    self.busy = True
                    try:
                        response = await self.server.handler.handle(req.method, req.path, req.body)
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # the handler maps errors itself; this is the last safety net
                        log.exception("internal error serving %s %s", req.method, req.path[:200])
                        response = error_response(Code.INTERNAL, "Internal error")
                    finally:
                        self.busy = False
                keep_alive = req.keep_alive and not self.server.closing
                if self.closing_after_queue and not self.pending:
                    keep_alive = False
                self._send(response, keep_alive, head=req.method == "HEAD", http10=req.http10)
                if not keep_alive:
                    self._close()
                    return
                if not self.write_ok.is_set():
                    await self.write_ok.wait()
        except asyncio.CancelledError:
            pass
        finally:
            self.worker = None

    def _send(self, response: Response, keep_alive: bool, *, head: bool = False, http10: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # The idle timer restarts with each answer: a request that ran longer than idle_timeout must not
        # get its keep-alive connection closed under the client's next request (expired()).
        self.last_active = time.monotonic()
        status = response.status
        lines = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
            b"Content-Type: %s\r\n" % response.content_type.encode("latin-1"),
            b"Content-Length: %d\r\n" % len(response.body),
        ]
        for name, value in response.headers:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        for name, value in self.server.extra_headers:
            lines.append(b"%s: %s\r\n" % (name, value))
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif http10:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        head_bytes = b"".join(lines)
        if head or not response.body:
            self.transport.write(head_bytes)
        elif len(response.body) < 65536:
            self.transport.write(head_bytes + response.body)
        else:
            self.transport.writelines((head_bytes, response.body))

    def _refuse(self, response: Response) -> None:
        """Stop parsing and answer ``response``, then close; requests parsed before it (pipelined) get
        their answers first."""
        self.refused = True
        if self.worker is None and not self.pending:
            self.closing = True
            self._send(response, keep_alive=False)
            self._close()
            return
        self.pending.append(_Request("", "", b"", False, False, response))

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def expired(self, now: float, idle_timeout: float) -> bool:
        """Idle for too long between requests, headers arriving for too long (slow-loris), or an upload
        with no byte for too long. A body still arriving is not cut off however long it takes."""
        if self.worker is not None or self.pending:
            return False
        if self.in_message and not self.headers_done:
            return now - self.message_started > idle_timeout
        return now - self.last_active > idle_timeout

    def close_if_idle(self) -> None:
        if self.worker is None and not self.pending:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RestServer:
    """A running REST server. ``port`` is the bound port (useful when started on port 0)."""

    def __init__(
        self,
        handler: RestHandler,
        *,
        max_body_bytes: int,
        max_header_bytes: int,
        executor: ThreadPoolExecutor,
        cors: bool,
        idle_timeout: float = 0,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.executor = executor
        self.extra_headers: list[tuple[bytes, bytes]] = []
        if cors:
            self.extra_headers = [
                (b"Access-Control-Allow-Origin", b"*"),
                (b"Access-Control-Allow-Methods", b"POST, GET"),
                (b"Access-Control-Allow-Headers", b"Content-Type"),
            ]
        self.closing = False
        self.idle_timeout = idle_timeout
        self._connections: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self.host = ""
        self.tls = False

    async def _sweep(self) -> None:
        """Close connections idle for ``idle_timeout`` (and requests trickling in for that long)."""
        period = min(max(self.idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._connections):
                if conn.expired(now, self.idle_timeout):
                    conn._close()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, close everything."""
        if self._server is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.closing = True
        self.handler.draining = True
        self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        while True:
            for conn in list(self._connections):
                conn.close_if_idle()
            if not self._connections or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            conn.abort()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        except (TimeoutError, asyncio.TimeoutError):
            pass
        self._server = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> RestServer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def start_rest_server(
    core: ServingCoreAPI,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_ms: int = 30000,
    num_threads: int | None = None,
    monitoring_path: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    metrics: Metrics | None = None,
    enable_cors: bool = False,
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    reuse_port: bool = False,
) -> RestServer:
    """Start the REST API on ``host:port`` (port 0 picks a free port; see ``RestServer.port``).

    Args:
        core: the serving core (anything implementing ``ServingCoreAPI``).
        ssl_context: serve HTTPS only (mutual TLS when the context requires client certificates).
        timeout_ms: ``--rest_api_timeout_in_ms``; a model request running longer gets 504 (0 = none).
        num_threads: ``--rest_api_num_threads``; threads that decode large JSON bodies (default
            4 × CPUs, as TF Serving).
        monitoring_path: serve the Prometheus text at this path (``None`` = monitoring disabled).
        max_body_bytes: larger request bodies are refused with 413.
        metrics: where request metrics go (default: the process-wide ``METRICS``).
        enable_cors: ``--rest_api_enable_cors_support`` headers.
        idle_timeout: seconds after which an idle keep-alive connection, or a request whose headers
            and body have not fully arrived, is closed (0 = never).
        reuse_port: share the port with the other ``--workers`` processes (SO_REUSEPORT).
    """
    threads = num_threads if num_threads and num_threads > 0 else 4 * (os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="teeserve-rest")
    handler = RestHandler(
        core,
        metrics if metrics is not None else METRICS,
        timeout_ms=timeout_ms,
        monitoring_path=monitoring_path,
        executor=executor,
        offload_bytes=offload_bytes,
    )
    server = RestServer(
        handler, max_body_bytes=max_body_bytes, max_header_bytes=max_header_bytes, executor=executor,
        cors=enable_cors, idle_timeout=idle_timeout,
    )
    loop = asyncio.get_running_loop()
    try:
        aserver = await loop.create_server(
            lambda: _Connection(server),
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=10.0 if ssl_context is not None else None,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
    except BaseException:
        executor.shutdown(wait=False)
        raise
    server._server = aserver
    if idle_timeout > 0:
        server._sweeper = loop.create_task(server._sweep())
    sock = aserver.sockets[0]
    server.host, server.port = sock.getsockname()[:2]
    server.tls = ssl_context is not None
    log.info("REST API listening on %s:%d (%s)", server.host, server.port, "TLS" if server.tls else "plaintext")
    return server
