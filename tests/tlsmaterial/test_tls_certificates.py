"""The issued certificates: extensions, names, validity, key types, and refused inputs."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from teeserve import tlsmaterial
from teeserve.tlsmaterial import CertificateOptionsError

from _tls_helpers import CLIENT_CN, SERVER_CN


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ext(cert: x509.Certificate, cls):  # type: ignore[no-untyped-def]
    return cert.extensions.get_extension_for_class(cls)


def test_ca_extensions(ec_material) -> None:
    ca = _cert(ec_material.ca_cert)
    assert ca.subject == ca.issuer
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = _ext(ca, x509.SubjectKeyIdentifier).value
    assert _ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{SERVER_CN} CA"


@pytest.mark.parametrize(
    ("which", "cn", "usage"),
    [
        ("server", SERVER_CN, ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH),
    ],
)
def test_leaf_extensions(ec_material, which: str, cn: str, usage) -> None:
    leaf = _cert(getattr(ec_material, f"{which}_cert"))
    ca = _cert(ec_material.ca_cert)
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [usage]
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert _ext(leaf, x509.SubjectKeyIdentifier).value.digest != aki
    assert leaf.serial_number != ca.serial_number


def test_subject_alt_names(ec_material, make_material) -> None:
    server = _ext(_cert(ec_material.server_cert), x509.SubjectAlternativeName).value
    assert server.get_values_for_type(x509.DNSName) == [SERVER_CN]
    assert server.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    client = _ext(_cert(ec_material.client_cert), x509.SubjectAlternativeName).value
    assert client.get_values_for_type(x509.DNSName) == [CLIENT_CN]
    assert client.get_values_for_type(x509.IPAddress) == []

    more = make_material(
        server_cn="10.1.2.3",
        server_dns=["grpc.example.com", "*.pods.example.com", "GRPC.example.com"],
        server_ips=["::1", "10.1.2.3"],
        client_dns=["requester.example.com"],
    )
    sans = _ext(_cert(more.server_cert), x509.SubjectAlternativeName).value
    # The IP-literal CN is an IP SAN; names are lower-cased and not repeated.
    assert sans.get_values_for_type(x509.DNSName) == ["grpc.example.com", "*.pods.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    csans = _ext(_cert(more.client_cert), x509.SubjectAlternativeName).value
    assert csans.get_values_for_type(x509.DNSName) == [CLIENT_CN, "requester.example.com"]


def test_chains_verify_under_rfc5280_policy(ec_material) -> None:
    """cryptography's own path validation (strict RFC 5280 profile) accepts both leaves."""
    ca = _cert(ec_material.ca_cert)
    builder = PolicyBuilder().store(Store([ca]))
    chain = builder.build_server_verifier(x509.DNSName(SERVER_CN)).verify(_cert(ec_material.server_cert), [])
    assert chain[-1] == ca
    verified = builder.build_client_verifier().verify(_cert(ec_material.client_cert), [])
    assert verified.chain[-1] == ca
    # The server certificate is not a client certificate (EKU serverAuth only).
    with pytest.raises(x509.verification.VerificationError):
        builder.build_client_verifier().verify(_cert(ec_material.server_cert), [])


def test_validity_defaults(ec_material) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca, leaf = _cert(ec_material.ca_cert), _cert(ec_material.server_cert)
    assert leaf.not_valid_before_utc <= now - tlsmaterial.CLOCK_SKEW + datetime.timedelta(minutes=1)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(days=365)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(days=3650)


def test_long_leaf_validity_extends_the_ca(tmp_path) -> None:
    made = tlsmaterial.make_tls_material(tmp_path / "t", server_cn="s.example", days=4000)
    ca, leaf = _cert(made.ca_cert), _cert(made.server_cert)
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-3072"])
def test_key_types(make_material, key_type: str) -> None:
    made = make_material(key_type=key_type)
    from cryptography.hazmat.primitives import serialization

    for cert_path, key_path in ((made.ca_cert, made.ca_key), (made.server_cert, made.server_key),
                                (made.client_cert, made.client_key)):
        pem = key_path.read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
        key = serialization.load_pem_private_key(pem, password=None)
        if key_type == "ec-p256":
            assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        else:
            assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    ku = _ext(_cert(made.server_cert), x509.KeyUsage).value
    assert ku.key_encipherment == (key_type != "ec-p256")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_cn": "bad name"}, "--server-cn"),
        ({"server_cn": ""}, "--server-cn"),
        ({"server_cn": "x" * 65}, "--server-cn"),
        ({"server_cn": "bücher.example"}, "xn--"),
        ({"server_cn": "-bad.example"}, "--server-cn"),
        ({"server_cn": "10.0.0.300"}, "neither a valid IP address"),
        ({"client_cn": "a_b"}, "--client-cn"),
        ({"server_dns": ["ok.example", "no spaces.example"]}, "--server-dns"),
        ({"server_ips": ["1.2.3"]}, "--server-ip"),
        ({"server_ips": ["localhost"]}, "--server-ip"),
        ({"server_ips": ["fe80::1%eth0"]}, r"--server-ip.*has a zone \(%eth0\)"),
        ({"server_cn": "fe80::1%eth0"}, r"server CN.*has a zone \(%eth0\), which a certificate cannot hold"),
        ({"client_cn": None, "client_dns": ["c.example"]}, "--client-dns"),
        ({"days": 0}, "--days"),
        ({"days": tlsmaterial.MAX_DAYS + 1}, "--days"),
        ({"days": 400, "ca_days": 100}, "--ca-days"),
        ({"key_type": "dsa-1024"}, "--key-type"),
        ({"ca_cn": SERVER_CN}, "--ca-cn"),
    ],
)
def test_refused_inputs_write_nothing(tmp_path, kwargs: dict, message: str) -> None:
    kwargs = {"server_cn": SERVER_CN, "client_cn": CLIENT_CN, **kwargs}
    out = tmp_path / "ssl_configure"
    with pytest.raises(CertificateOptionsError, match=message) as info:
        tlsmaterial.make_tls_material(out, **kwargs)
    assert info.value.exit_code == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

