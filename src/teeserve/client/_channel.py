"""Connections to a teeserve (or TensorFlow Serving) server: gRPC channels and REST sessions, with TLS.

The requester's side of the trust story: the server is checked against the model owner's CA (``ca``)
and, for mutual TLS, the requester presents its own certificate (``crt``/``key``). ``server_name``
overrides the name checked in the server certificate when the address differs (an IP, a load
balancer, a tunnel).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .._errors import TeeserveError
from .._proto import SERVICES, message_class

__all__ = ["TlsOptions", "ClientError", "grpc_channel", "aio_grpc_channel", "Stub", "rest_ssl_context"]

_MAX_MESSAGE = 2**31 - 1


class ClientError(TeeserveError):
    """A request could not be made or was refused; the message says which and why."""


@dataclass(frozen=True)
class TlsOptions:
    ca: str | None = None
    crt: str | None = None
    key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.ca is None and (self.crt is not None or self.key is not None):
            raise ClientError("--crt/--key need --ca (the CA that signed the server's certificate): "
                              "without it nothing would be encrypted")
        if self.ca is None and self.server_name is not None:
            raise ClientError("--server-name needs --ca: without TLS there is no certificate to check the "
                              "name against, and the request would go in plaintext")

    @property
    def enabled(self) -> bool:
        return self.ca is not None

    def _read(self, path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ClientError(f"{path}: cannot read the {what}: {exc.strerror}") from exc

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        if (self.crt is None) != (self.key is None):
            raise ClientError("mutual TLS needs both --crt and --key")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "CA certificate"),
            private_key=self._read(self.key, "client key"),
            certificate_chain=self._read(self.crt, "client certificate"),
        )


def _options(tls: TlsOptions) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        # One connection per channel, as the reference benchmark does: never share subchannels.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


def grpc_channel(target: str, tls: TlsOptions) -> grpc.Channel:
    if tls.enabled:
        return grpc.secure_channel(target, tls.grpc_credentials(), options=_options(tls))
    return grpc.insecure_channel(target, options=_options(tls))


def aio_grpc_channel(target: str, tls: TlsOptions) -> grpc.aio.Channel:
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.grpc_credentials(), options=_options(tls))
    return grpc.aio.insecure_channel(target, options=_options(tls))


class Stub:
    """Unary callables for every TensorFlow Serving method, over the vendored protos.

    ``Stub(channel).Predict(request, timeout=...)`` works with sync and aio channels alike.
    """

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for service, methods in SERVICES.items():
            for method, (req, resp) in methods.items():
                setattr(self, method, channel.unary_unary(
                    f"/{service}/{method}",
                    request_serializer=message_class(req).SerializeToString,
                    response_deserializer=message_class(resp).FromString,
                ))


def rest_ssl_context(tls: TlsOptions) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"{tls.ca}: not a usable CA certificate ({_reason(exc)})") from None
    if tls.crt or tls.key:
        if not (tls.crt and tls.key):
            raise ClientError("mutual TLS needs both --crt and --key")

        def no_password() -> str:
            raise ClientError(f"{tls.key}: the client key is encrypted; give an unencrypted PEM key")

        try:
            ctx.load_cert_chain(tls.crt, tls.key, password=no_password)
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"{tls.crt}, {tls.key}: not a usable client certificate and matching key "
                              f"({_reason(exc)})") from None
    return ctx


def _reason(exc: OSError) -> str:
    """OpenSSL's reason (``NO_CERTIFICATE_OR_CRL_FOUND``) or the OS error, without the C file name."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    return exc.strerror or str(exc)
