"""A real gRPC server on 127.0.0.1 with ``grpc_server_credentials`` from the generated ssl.cfg."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from teeserve import tlsmaterial

from _tls_helpers import CLIENT_CN, SERVER_CN

_METHOD = "/teeserve.test.Echo/Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    # Answer with the client certificate's CN, as the server's TLS layer verified it.
    cns = context.auth_context().get("x509_common_name", [b"-"])
    return b"echo:" + request + b":" + cns[0]


def _start(material: tlsmaterial.TlsMaterial) -> tuple[grpc.Server, int]:
    """A gRPC server on 127.0.0.1 with the credentials TensorFlow Serving would build from ssl.cfg."""
    creds = tlsmaterial.grpc_server_credentials(tlsmaterial.load_ssl_config(material.ssl_cfg))
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "teeserve.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port > 0
    server.start()
    return server, port


@pytest.fixture(params=["ec-p256", "rsa-3072"])
def served(request, make_material) -> Iterator[tuple[tlsmaterial.TlsMaterial, int]]:
    material = make_material(key_type=request.param)
    server, port = _start(material)
    try:
        yield material, port
    finally:
        server.stop(grace=None)


def _call(port: int, creds: grpc.ChannelCredentials) -> bytes:
    options = [("grpc.ssl_target_name_override", SERVER_CN)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        return channel.unary_unary(_METHOD)(b"ping", timeout=10)


def test_grpc_mutual_tls_succeeds(served) -> None:
    material, port = served
    creds = grpc.ssl_channel_credentials(
        root_certificates=material.ca_cert.read_bytes(),
        private_key=material.client_key.read_bytes(),
        certificate_chain=material.client_cert.read_bytes(),
    )
    assert _call(port, creds) == b"echo:ping:" + CLIENT_CN.encode()


def test_grpc_client_without_certificate_fails(served) -> None:
    material, port = served
    creds = grpc.ssl_channel_credentials(root_certificates=material.ca_cert.read_bytes())
    with pytest.raises(grpc.RpcError) as info:
        _call(port, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_client_with_certificate_from_another_ca_fails(served, other_ca_material) -> None:
    material, port = served
    creds = grpc.ssl_channel_credentials(
        root_certificates=material.ca_cert.read_bytes(),
        private_key=other_ca_material.client_key.read_bytes(),
        certificate_chain=other_ca_material.client_cert.read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as info:
        _call(port, creds)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_oneway(oneway_material) -> None:
    server, port = _start(oneway_material)
    try:
        ok = grpc.ssl_channel_credentials(root_certificates=oneway_material.ca_cert.read_bytes())
        assert _call(port, ok) == b"echo:ping:-"  # no client certificate
    finally:
        server.stop(grace=None)
