"""``teeserve certs`` through the real CLI entry point."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509

from teeserve import tlsmaterial
from teeserve.cli import main

from _tls_helpers import CLIENT_CN, SERVER_CN


def _sans(path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in sans.get_values_for_type(x509.DNSName)] + [
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    ]


def test_two_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ssl_configure"
    rc = main(["certs", "--server-cn", SERVER_CN, "--client-cn", CLIENT_CN, "--server-dns", "grpc.example",
               "--server-ip", "10.0.0.5", "--client-dns", "req.example", "-o", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "two-way" in text and "SHA-256" in text
    assert re.search(r"^  server/key\.pem +0600$", text, re.M)
    assert re.search(r"^  ca_cert\.pem +0644$", text, re.M)
    assert "PRIVATE KEY" not in text
    cfg = tlsmaterial.load_ssl_config(out / "ssl.cfg")
    assert cfg.client_verify
    assert _sans(out / "server" / "cert.pem") == [SERVER_CN, "grpc.example", "10.0.0.5"]
    assert _sans(out / "client" / "cert.pem") == [CLIENT_CN, "req.example"]
    assert stat.S_IMODE(os.stat(out / "client" / "key.pem").st_mode) == 0o600


def test_oneway_with_loopback_and_key_type(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert main(["certs", "--server-cn", "localhost", "--oneway", "--loopback", "--key-type", "rsa-3072",
                 "--days", "30", "-o", str(out)]) == 0
    assert not (out / "client").exists()
    assert not tlsmaterial.load_ssl_config(out / "ssl.cfg").client_verify
    assert _sans(out / "server" / "cert.pem") == ["localhost", "127.0.0.1", "::1"]
    cert = x509.load_pem_x509_certificate((out / "server" / "cert.pem").read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert cert.public_key().key_size == 3072


def test_no_implicit_loopback_names(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert main(["certs", "--server-cn", SERVER_CN, "--oneway", "-o", str(out)]) == 0
    assert _sans(out / "server" / "cert.pem") == [SERVER_CN]


def test_refuses_to_overwrite_then_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ssl_configure"
    args = ["certs", "--server-cn", SERVER_CN, "--client-cn", CLIENT_CN, "-o", str(out)]
    assert main(args) == 0
    first = (out / "ca_cert.pem").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("teeserve: error: ") and "--force" in err and err.count("\n") == 1
    assert (out / "ca_cert.pem").read_bytes() == first
    assert main([*args, "--force"]) == 0
    assert (out / "ca_cert.pem").read_bytes() != first


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--server-cn", SERVER_CN], "--client-cn is required"),
        (["--server-cn", SERVER_CN, "--client-cn", CLIENT_CN, "--oneway"], "--oneway"),
        (["--server-cn", "not a host", "--oneway"], "--server-cn"),
        (["--server-cn", SERVER_CN, "--oneway", "--server-ip", "300.1.1.1"], "--server-ip"),
        (["--server-cn", SERVER_CN, "--oneway", "--days", "-5"], "--days"),
    ],
)
def test_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    assert main(["certs", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teeserve: error: ") and needle in err
    assert "Traceback" not in err
    assert not out.exists()


def test_help_documents_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["certs", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("default: ec-p256", "default: 365", "default: 3650", "ssl.cfg", "0600", "--loopback"):
        assert needle in text
