"""The enclave side of secret provisioning: an asyncio + stdlib ``ssl`` shell over :class:`Connection`.

Strategy (gramine-formats.md §2.1, §2.2, §2.4, §2.6): try a plain TCP connect to each server of the
list in order and keep the first that accepts; then TLS on that connection only (a TLS or attestation
failure does not fall back to the next server, as in Gramine). The client presents the RA-TLS
certificate and verifies the server against the CA file and the host name it dialled. The RA-TLS
private key is handed to OpenSSL through an anonymous memory file (``memfd_create``) and never
exists as a regular file. All protocol decisions are made by the sans-IO :class:`Connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._connection import DEFAULT_MAX_SECRET_SIZE, NEED_DATA, Connection
from ._errors import (
    ProvisionConnectError,
    ProvisionDenied,
    ProvisionError,
    ProvisionTimeout,
    ProvisionTLSError,
)
from ._events import ConnectionClosed, Data, SecretRequest, SecretResponse
from ._secret import decode_secret
from ._servers import DEFAULT_SERVERS, parse_servers
from ._state import Role

if TYPE_CHECKING:
    from ..attest.ratls import RaTlsCredentials

__all__ = [
    "DEFAULT_TIMEOUT",
    "ProvisionSession",
    "ProvisionClient",
    "open_session",
    "fetch_secret",
    "client_context",
    "write_key_to_gramine",
    "client_from_env",
]

DEFAULT_TIMEOUT = 10.0
_READ_CHUNK = 65536


def _memory_file(name: str, data: bytes) -> int:
    """An fd whose ``/proc/self/fd/N`` path reads back ``data``; memfd if possible, else a pipe."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        read_fd, write_fd = os.pipe()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os.close(write_fd)
        return read_fd
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def client_context(
    ca_path: str | os.PathLike[str], credentials: RaTlsCredentials | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context: trust only ``ca_path`` (PEM or DER), check host names, present the
    RA-TLS certificate of ``credentials`` (loaded from memory).

    Raises:
        ProvisionError: the CA file cannot be read or parsed, or the credentials cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with open(ca_path, "rb") as fh:
            ca = fh.read()
    except OSError as exc:
        raise ProvisionError(f"{os.fspath(ca_path)}: cannot read the CA file: {exc.strerror or exc}") from exc
    try:
        if ca.lstrip().startswith(b"-----BEGIN"):
            ctx.load_verify_locations(cadata=ca.decode("ascii"))
        else:
            ctx.load_verify_locations(cadata=ca)
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{os.fspath(ca_path)}: not a PEM or DER CA certificate: {exc}") from exc
    if credentials is not None:
        fds = [
            _memory_file("ratls-cert", credentials.cert_pem),
            _memory_file("ratls-key", credentials.key_pem),
        ]
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        except (ssl.SSLError, OSError) as exc:
            raise ProvisionError(f"cannot load the RA-TLS certificate and key: {exc}") from exc
        finally:
            for fd in fds:
                os.close(fd)
    return ctx


@dataclass(eq=False)
class ProvisionSession:
    """An open provisioning session after the secret arrived; optional application traffic follows."""

    secret: bytes = field(repr=False)
    server: tuple[str, int]
    tls_version: str | None
    _reader: asyncio.StreamReader = field(repr=False)
    _writer: asyncio.StreamWriter = field(repr=False)
    _conn: Connection = field(repr=False)
    _timeout: float = field(repr=False)

    async def send(self, data: bytes) -> None:
        """Send application bytes (message 4 of §2.3)."""
        self._writer.write(self._conn.send(Data(data)))
        await asyncio.wait_for(self._writer.drain(), self._timeout)

    async def receive(self) -> bytes:
        """Receive application bytes; ``b""`` once the server closed the session."""
        while True:
            event = self._conn.next_event()
            if isinstance(event, Data):
                return event.data
            if isinstance(event, ConnectionClosed):
                return b""
            self._conn.receive_data(await _read(self._reader, self._timeout, self.server))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), self._timeout)


async def _read(
    reader: asyncio.StreamReader, timeout: float, server: tuple[str, int], n: int = _READ_CHUNK
) -> bytes:
    where = f"{server[0]}:{server[1]}"
    try:
        return await asyncio.wait_for(reader.read(n), timeout)
    except asyncio.TimeoutError as exc:
        raise ProvisionTimeout(f"{where}: no answer within {timeout} s") from exc
    except ssl.SSLError as exc:
        raise ProvisionDenied(
            f"{where}: server ended the TLS session without a secret ({exc.reason})"
        ) from exc
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ProvisionDenied(f"{where}: server reset the connection without sending a secret") from exc


async def _connect(entries: list[tuple[str, int]], timeout: float) -> tuple[str, int, Any, Any]:
    failures: list[str] = []
    for host, port in entries:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            failures.append(f"{host}:{port} ({exc.strerror if isinstance(exc, OSError) else 'timeout'})")
            continue
        return host, port, reader, writer
    raise ProvisionConnectError("no secret-provisioning server accepted a connection: " + ", ".join(failures))


@contextlib.asynccontextmanager
async def open_session(
    servers: str,
    ca_path: str | os.PathLike[str],
    credentials: RaTlsCredentials | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_secret: int = DEFAULT_MAX_SECRET_SIZE,
) -> AsyncIterator[ProvisionSession]:
    """Connect, attest (TLS with the RA-TLS client certificate), request and receive the secret.

    Yields a :class:`ProvisionSession` for optional application traffic; closes it on exit.

    Raises:
        ServerListError: ``servers`` has no usable entry.
        ProvisionConnectError: no server accepted a TCP connection.
        ProvisionTLSError: the TLS handshake failed (server certificate not from the CA, host-name
            mismatch, protocol mismatch).
        ProvisionTimeout: a step took longer than ``timeout`` seconds.
        ProvisionDenied: the server closed the session without a secret.
        RemoteProtocolError: the server answered with bytes the protocol does not allow.
    """
    entries = parse_servers(servers)
    ctx = client_context(ca_path, credentials)
    host, port, reader, writer = await _connect(entries, timeout)
    where = f"{host}:{port}"
    try:
        try:
            await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ProvisionTLSError(f"{where}: server certificate rejected: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise ProvisionTLSError(f"{where}: TLS handshake failed: {exc.reason or exc}") from exc
        except asyncio.TimeoutError as exc:
            raise ProvisionTimeout(f"{where}: TLS handshake took longer than {timeout} s") from exc
        except (ConnectionError, OSError) as exc:
            raise ProvisionTLSError(f"{where}: connection lost during the TLS handshake") from exc
        ssl_object = writer.get_extra_info("ssl_object")
        conn = Connection(Role.CLIENT, max_secret_size=max_secret)
        writer.write(conn.send(SecretRequest()))
        try:
            await asyncio.wait_for(writer.drain(), timeout)
        except (ConnectionError, ssl.SSLError) as exc:
            raise ProvisionDenied(f"{where}: server closed the session before the request was sent") from exc
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                want = conn.bytes_needed or _READ_CHUNK
                conn.receive_data(await _read(reader, timeout, (host, port), min(want, _READ_CHUNK)))
                continue
            if isinstance(event, SecretResponse):
                secret = event.secret
                break
            if isinstance(event, ConnectionClosed):
                raise ProvisionDenied(f"{where}: server closed the session without sending a secret")
        session = ProvisionSession(
            secret=secret,
            server=(host, port),
            tls_version=ssl_object.version() if ssl_object is not None else None,
            _reader=reader,
            _writer=writer,
            _conn=conn,
            _timeout=timeout,
        )
        yield session
    finally:
        with contextlib.suppress(Exception):
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def fetch_secret(
    servers: str,
    ca_path: str | os.PathLike[str],
    credentials: RaTlsCredentials | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_secret: int = DEFAULT_MAX_SECRET_SIZE,
) -> bytes:
    """Get the secret from the first reachable server of ``servers`` (``SECRET_PROVISION_SERVERS`` syntax).

    ``credentials`` is the :class:`~teeserve.attest.ratls.RaTlsCredentials` presented as the client
    certificate. Raises what :func:`open_session` raises.
    """
    async with open_session(servers, ca_path, credentials, timeout=timeout, max_secret=max_secret) as session:
        return session.secret


def write_key_to_gramine(
    key: bytes, name: str = "default", root: str | os.PathLike[str] = "/dev/attestation"
) -> None:
    """Install a provisioned 16-byte key as Gramine's encrypted-files key ``name`` (one write).

    Raises:
        TypeError, ValueError: not a 16-byte key, or a bad name.
        EvidenceError: the pseudo-file is missing or refused the write.
    """
    from ..attest.evidence import GramineProvider

    GramineProvider(root).write_key(name, key)


@dataclass(frozen=True)
class ProvisionClient:
    """The enclave-side settings of Gramine's provisioning library, usually from the environment."""

    servers: str = DEFAULT_SERVERS
    ca_path: str = ""
    set_key: str | None = None
    attestation_root: str = "/dev/attestation"
    timeout: float = DEFAULT_TIMEOUT
    max_secret: int = DEFAULT_MAX_SECRET_SIZE

    async def fetch(self, credentials: RaTlsCredentials) -> bytes:
        """The secret, as :func:`fetch_secret` returns it."""
        return await fetch_secret(
            self.servers, self.ca_path, credentials, timeout=self.timeout, max_secret=self.max_secret
        )

    async def provision(self, credentials: RaTlsCredentials) -> bytes:
        """Fetch the secret; with ``set_key``, require 16 raw bytes and install them as that key.

        Raises:
            SecretFormatError: ``set_key`` is given and the secret is not exactly 16 bytes.
            ProvisionError, EvidenceError: as :func:`fetch_secret` and :func:`write_key_to_gramine`.
        """
        secret = await self.fetch(credentials)
        if self.set_key:
            key = decode_secret(secret, "raw")
            write_key_to_gramine(key, self.set_key, self.attestation_root)
        return secret


_TRUTHY = ("1", "true", "TRUE")


def client_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> ProvisionClient:
    """Settings from ``SECRET_PROVISION_SERVERS`` (default ``localhost:4433``),
    ``SECRET_PROVISION_CA_CHAIN_PATH`` (required) and ``SECRET_PROVISION_SET_KEY`` (or the legacy
    ``SECRET_PROVISION_SET_PF_KEY`` = ``1``/``true``/``TRUE`` → key ``default``).

    Raises:
        ProvisionError: ``SECRET_PROVISION_CA_CHAIN_PATH`` is not set.
    """
    env = os.environ if environ is None else environ
    ca_path = env.get("SECRET_PROVISION_CA_CHAIN_PATH", "")
    if not ca_path and "ca_path" not in overrides:
        raise ProvisionError(
            "SECRET_PROVISION_CA_CHAIN_PATH is not set (the CA file of the provisioning server)"
        )
    set_key = env.get("SECRET_PROVISION_SET_KEY") or None
    if set_key is None and env.get("SECRET_PROVISION_SET_PF_KEY") in _TRUTHY:
        set_key = "default"
    settings: dict[str, Any] = {
        "servers": env.get("SECRET_PROVISION_SERVERS") or DEFAULT_SERVERS,
        "ca_path": ca_path,
        "set_key": set_key,
    }
    settings.update(overrides)
    return ProvisionClient(**settings)
