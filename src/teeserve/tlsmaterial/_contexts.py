"""Server-side TLS from an :class:`SSLConfig`: a stdlib ``ssl.SSLContext`` and gRPC credentials.

Strategy: the PEM text lives in memory only. gRPC takes PEM bytes directly. The stdlib's
``SSLContext.load_cert_chain`` only takes file names, so the key and certificate are handed to it as
anonymous in-memory files: ``os.memfd_create`` (Linux) gives a file descriptor backed by memory with
no name in any filesystem, and OpenSSL opens it through ``/proc/self/fd/N``. The descriptor is
close-on-exec and closed as soon as OpenSSL has read it, so the private key is never written to disk
(on the TEE host it would otherwise leave the enclave's protected memory in plaintext). Where
``memfd_create`` does not exist or is refused (macOS; a library OS), a pipe read through
``/dev/fd/N`` does the same job. Either way the key is only ever in process memory.
Trust anchors go in with ``load_verify_locations(cadata=...)``, which takes PEM text directly.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._errors import SSLConfigError
from ._sslcfg import SSLConfig

if TYPE_CHECKING:
    import grpc

__all__ = ["server_ssl_context", "grpc_server_credentials", "memory_file"]

# A pipe holds at least this much without a reader on every platform we care about.
_PIPE_LIMIT = 16384


@contextlib.contextmanager
def memory_file(data: bytes, name: str = "teeserve-pem") -> Iterator[str]:
    """Yield a path that reads back ``data`` once, backed by memory and never by a disk file.

    Linux: a ``memfd`` opened through ``/proc/self/fd/N``. Where ``memfd_create`` is missing or refused
    (macOS; a library OS that does not emulate it): a pipe read through ``/dev/fd/N``, which holds any
    PEM key or short chain (up to 16 KiB) without a reader.
    """
    memfd_create = getattr(os, "memfd_create", None)
    fd = -1
    if memfd_create is not None:
        try:
            fd = memfd_create(name, getattr(os, "MFD_CLOEXEC", 1))
        except OSError:
            fd = -1
    if fd < 0:
        with _pipe_file(data, name) as path:
            yield path
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


@contextlib.contextmanager
def _pipe_file(data: bytes, name: str) -> Iterator[str]:
    """The fallback of :func:`memory_file`: a pipe, written in full and closed before it is read."""
    if len(data) > _PIPE_LIMIT:
        raise SSLConfigError(name, f"PEM data larger than {_PIPE_LIMIT} bytes cannot be passed in memory")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        write_fd = -1
        yield f"/dev/fd/{read_fd}"
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def server_ssl_context(cfg: SSLConfig, *, source: str = "ssl.cfg") -> ssl.SSLContext:
    """A server ``SSLContext`` for ``cfg``: TLS 1.2 or newer; client certificate required (and checked
    against ``custom_ca``) when ``client_verify`` is true, not requested otherwise.

    Raises:
        SSLConfigError: OpenSSL refused the key, the certificate or the CA (naming ``source``).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    with memory_file(cfg.server_cert.encode("utf-8"), "teeserve-server-cert") as cert_path:
        with memory_file(cfg.server_key.encode("utf-8"), "teeserve-server-key") as key_path:
            try:
                context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                raise SSLConfigError(
                    source, f"OpenSSL refused the server key or certificate ({exc.reason or 'unknown'})"
                ) from None
    if cfg.client_verify:
        if not cfg.custom_ca.strip():
            raise SSLConfigError(source, "client_verify is true but custom_ca is empty", field="custom_ca")
        try:
            context.load_verify_locations(cadata=cfg.custom_ca)
        except ssl.SSLError as exc:
            raise SSLConfigError(
                source,
                f"OpenSSL refused the CA certificate(s) ({exc.reason or 'unknown'})",
                field="custom_ca",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def grpc_server_credentials(cfg: SSLConfig) -> grpc.ServerCredentials:
    """gRPC server credentials for ``cfg``, as TensorFlow Serving builds them: ``custom_ca`` as the
    root certificates and, when ``client_verify`` is true, client certificates requested, required
    and verified."""
    import grpc

    if cfg.client_verify and not cfg.custom_ca.strip():
        raise SSLConfigError("ssl.cfg", "client_verify is true but custom_ca is empty", field="custom_ca")
    return grpc.ssl_server_credentials(
        [(cfg.server_key.encode("utf-8"), cfg.server_cert.encode("utf-8"))],
        root_certificates=cfg.custom_ca.encode("utf-8") if cfg.custom_ca.strip() else None,
        require_client_auth=cfg.client_verify,
    )
