"""Real TLS on 127.0.0.1 with the generated material: the server side is the library's
``server_ssl_context`` (what the REST front end uses), the client side is plain stdlib ``ssl``."""

from __future__ import annotations

import os
import ssl

import pytest

from teeserve import tlsmaterial

from _tls_helpers import CLIENT_CN, SERVER_CN, client_context, peer_cn, tls_exchange


def _server(material: tlsmaterial.TlsMaterial) -> ssl.SSLContext:
    return tlsmaterial.server_ssl_context(tlsmaterial.load_ssl_config(material.ssl_cfg))


def _mtls_client(material: tlsmaterial.TlsMaterial) -> ssl.SSLContext:
    return client_context(material.ca_cert, material.client_cert, material.client_key)


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-3072", "rsa-4096"])
def test_mutual_tls_handshake_succeeds(make_material, key_type: str) -> None:
    material = make_material(key_type=key_type)
    result = tls_exchange(_server(material), _mtls_client(material), SERVER_CN)
    assert result.ok, (result.client_error, result.server_error)
    # The server saw and verified the client's certificate.
    assert peer_cn(result.peer_cert) == CLIENT_CN
    assert result.version in ("TLSv1.2", "TLSv1.3")


def test_tls12_client_is_accepted(ec_material) -> None:
    client = _mtls_client(ec_material)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    result = tls_exchange(_server(ec_material), client, SERVER_CN)
    assert result.ok, (result.client_error, result.server_error)
    assert result.version == "TLSv1.2"


def test_server_context_settings(ec_material, oneway_material) -> None:
    two_way = _server(ec_material)
    assert two_way.minimum_version == ssl.TLSVersion.TLSv1_2
    assert two_way.verify_mode == ssl.CERT_REQUIRED
    assert _server(oneway_material).verify_mode == ssl.CERT_NONE


def test_client_without_certificate_is_refused(ec_material) -> None:
    result = tls_exchange(_server(ec_material), client_context(ec_material.ca_cert), SERVER_CN)
    assert result.reply != b"echo:ping"
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert result.peer_cert is None


def test_client_with_certificate_from_another_ca_is_refused(ec_material, other_ca_material) -> None:
    # The intruder trusts the right server CA but presents a client certificate from its own CA,
    # with the very same subject name.
    client = client_context(ec_material.ca_cert, other_ca_material.client_cert, other_ca_material.client_key)
    result = tls_exchange(_server(ec_material), client, SERVER_CN)
    assert result.reply != b"echo:ping"
    assert isinstance(result.server_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(result.server_error)
    assert result.peer_cert is None


def test_server_from_another_ca_is_refused_by_the_client(ec_material, other_ca_material) -> None:
    result = tls_exchange(_server(other_ca_material), _mtls_client(ec_material), SERVER_CN)
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert result.reply is None


def test_hostname_mismatch_is_refused_by_the_client(ec_material) -> None:
    result = tls_exchange(_server(ec_material), _mtls_client(ec_material), "other.tf-serving.service.com")
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert "hostname" in str(result.client_error).lower()
    assert result.reply is None


def test_ip_san_is_matched(ec_material) -> None:
    # ec_material was made with --server-ip 127.0.0.1: dialling the address verifies.
    result = tls_exchange(_server(ec_material), _mtls_client(ec_material), "127.0.0.1")
    assert result.ok, (result.client_error, result.server_error)


def test_ip_literal_server_cn_becomes_an_ip_san(make_material) -> None:
    material = make_material(server_cn="127.0.0.1", client_cn=None)
    result = tls_exchange(_server(material), client_context(material.ca_cert), "127.0.0.1")
    assert result.ok, (result.client_error, result.server_error)


def test_oneway_material_works_without_client_certificate(oneway_material) -> None:
    assert oneway_material.client_cert is None and not oneway_material.two_way
    result = tls_exchange(_server(oneway_material), client_context(oneway_material.ca_cert), SERVER_CN)
    assert result.ok, (result.client_error, result.server_error)
    assert not result.peer_cert  # no client certificate requested


def test_memory_file_is_anonymous_memory_and_closed_after_use() -> None:
    data = b"-----BEGIN PRIVATE KEY-----\nnot a real key\n-----END PRIVATE KEY-----\n"
    with tlsmaterial.memory_file(data, "teeserve-test") as path:
        assert path.startswith("/proc/self/fd/")
        fd = int(path.rsplit("/", 1)[1])
        # A memfd has no name in any filesystem: the link reads "/memfd:NAME (deleted)".
        assert os.readlink(path).startswith("/memfd:teeserve-test")
        with open(path, "rb") as fh:
            assert fh.read() == data
    with pytest.raises(OSError):
        os.fstat(fd)


def test_pipe_fallback_reads_back_and_is_closed(ec_material) -> None:
    """The fallback for systems without memfd: a real pipe, and OpenSSL can load a key through it."""
    from teeserve.tlsmaterial._contexts import _pipe_file

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with _pipe_file(ec_material.server_cert.read_bytes(), "cert") as cert_path:
        with _pipe_file(ec_material.server_key.read_bytes(), "key") as key_path:
            assert key_path.startswith("/dev/fd/")
            context.load_cert_chain(cert_path, key_path)
            fd = int(key_path.rsplit("/", 1)[1])
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(tlsmaterial.SSLConfigError, match="larger than"):
        with _pipe_file(b"x" * 20000, "big"):
            pass


def test_server_context_from_an_unchecked_mismatched_config(ec_material, other_ca_material) -> None:
    """An SSLConfig built by hand (not parsed) with a key from another set: a clear SSLConfigError."""
    cfg = tlsmaterial.SSLConfig(
        server_key=other_ca_material.server_key.read_text(),
        server_cert=ec_material.server_cert.read_text(),
        custom_ca=ec_material.ca_cert.read_text(),
        client_verify=True,
    )
    with pytest.raises(tlsmaterial.SSLConfigError, match=r"^my\.cfg: OpenSSL refused the server key"):
        tlsmaterial.server_ssl_context(cfg, source="my.cfg")
