"""``ssl.cfg``: TensorFlow Serving's SSLConfig text format, checked against the real proto definition."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeserve import tlsmaterial
from teeserve._proto import pb
from teeserve.tlsmaterial import SSLConfig, SSLConfigError


def _pem_body_fragments(pem: str) -> list[str]:
    """16-character pieces of a PEM body: none of them may appear in an error message."""
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    return [body[i : i + 16] for i in range(0, len(body) - 16, 8)]


def test_ssl_cfg_parses_with_the_proto_definition(ec_material) -> None:
    message = text_format.Parse(ec_material.ssl_cfg.read_text(), pb.SSLConfig())
    assert message.DESCRIPTOR.full_name == "tensorflow.serving.SSLConfig"
    assert message.server_key == ec_material.server_key.read_text()
    assert message.server_cert == ec_material.server_cert.read_text()
    assert message.custom_ca == ec_material.ca_cert.read_text()
    assert message.client_verify is True


def test_ssl_cfg_layout_matches_tf_serving(ec_material) -> None:
    text = ec_material.ssl_cfg.read_text()
    # PEM inline as string literals with \n escapes (a literal backslash and n), one field per line.
    assert re.search(r'^server_key: "-----BEGIN PRIVATE KEY-----\\n[A-Za-z0-9+/=\\n]+'
                     r'-----END PRIVATE KEY-----\\n"$', text, re.M)
    assert re.search(r'^server_cert: "-----BEGIN CERTIFICATE-----\\n', text, re.M)
    assert re.search(r'^custom_ca: "-----BEGIN CERTIFICATE-----\\n', text, re.M)
    assert re.search(r"^client_verify: true$", text, re.M)


def test_oneway_ssl_cfg(oneway_material) -> None:
    message = text_format.Parse(oneway_material.ssl_cfg.read_text(), pb.SSLConfig())
    assert message.client_verify is False
    assert message.custom_ca == ""
    cfg = tlsmaterial.load_ssl_config(oneway_material.ssl_cfg)
    assert cfg.client_verify is False


def test_round_trip(ec_material) -> None:
    cfg = tlsmaterial.load_ssl_config(ec_material.ssl_cfg)
    assert cfg == SSLConfig(
        server_key=ec_material.server_key.read_text(),
        server_cert=ec_material.server_cert.read_text(),
        custom_ca=ec_material.ca_cert.read_text(),
        client_verify=True,
    )
    text = tlsmaterial.format_ssl_config(cfg)
    assert tlsmaterial.parse_ssl_config(text, "formatted") == cfg
    assert tlsmaterial.parse_ssl_config(text.encode(), "formatted") == cfg
    # The file is the formatted message after a comment header.
    assert ec_material.ssl_cfg.read_text().endswith(text)


def test_reference_style_single_quotes_parse(ec_material) -> None:
    """The reference deployment's script writes single-quoted literals; they must read the same."""
    def lit(path) -> str:
        return "'" + path.read_text().replace("\n", "\\n") + "'"

    text = (
        f"server_key: {lit(ec_material.server_key)}\nserver_cert: {lit(ec_material.server_cert)}\n"
        f"custom_ca: {lit(ec_material.ca_cert)}\nclient_verify: true\n"
    )
    assert tlsmaterial.parse_ssl_config(text, "ref.cfg") == tlsmaterial.load_ssl_config(ec_material.ssl_cfg)


def test_repr_hides_the_private_key(ec_material) -> None:
    cfg = tlsmaterial.load_ssl_config(ec_material.ssl_cfg)
    assert "PRIVATE KEY" not in repr(cfg)
    assert "server_cert=" in repr(cfg)


def _cfg_text(material, **override: object) -> str:
    fields = {
        "server_key": material.server_key.read_text(),
        "server_cert": material.server_cert.read_text(),
        "custom_ca": material.ca_cert.read_text(),
        "client_verify": True,
    }
    fields.update(override)
    return tlsmaterial.format_ssl_config(SSLConfig(**fields))  # type: ignore[arg-type]


def _error(text: str | bytes) -> SSLConfigError:
    with pytest.raises(SSLConfigError) as info:
        tlsmaterial.parse_ssl_config(text, "conf/ssl.cfg")
    assert str(info.value).startswith("conf/ssl.cfg")
    assert info.value.exit_code == 2
    return info.value


def test_garbage_is_refused() -> None:
    err = _error("this is not a config {")
    assert "line 1" in str(err)


def test_unknown_field_is_named() -> None:
    err = _error('server_kye: "x"\n')
    assert "unknown field 'server_kye'" in str(err)
    assert "server_key, server_cert, custom_ca, client_verify" in str(err)


def test_unquoted_pem_never_appears_in_the_error(ec_material) -> None:
    key = ec_material.server_key.read_text()
    for text in (key, "server_key: " + key.replace("\n", " "), key.splitlines()[1]):
        err = _error(text)
        for fragment in _pem_body_fragments(key):
            assert fragment not in str(err)


def test_repeated_field() -> None:
    assert "more than once" in str(_error('server_key: "a"\nserver_key: "b"\n'))


def test_not_utf8() -> None:
    assert "not UTF-8" in str(_error(b'server_key: "\xff\xfe"'))


def test_empty_file_lacks_server_key() -> None:
    err = _error("")
    assert err.field == "server_key"


def test_key_that_does_not_match_the_certificate(ec_material, other_ca_material) -> None:
    err = _error(_cfg_text(ec_material, server_key=other_ca_material.server_key.read_text()))
    assert err.field == "server_cert"
    assert "does not match server_key" in str(err)


def test_client_verify_without_custom_ca(ec_material) -> None:
    err = _error(_cfg_text(ec_material, custom_ca=""))
    assert err.field == "custom_ca"
    assert "client_verify is true" in str(err)


def test_password_protected_key(ec_material) -> None:
    key = serialization.load_pem_private_key(ec_material.server_key.read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    err = _error(_cfg_text(ec_material, server_key=encrypted))
    assert err.field == "server_key" and "password" in str(err)


@pytest.mark.parametrize("name", ["server_key", "server_cert", "custom_ca"])
def test_field_that_is_not_pem(ec_material, name: str) -> None:
    err = _error(_cfg_text(ec_material, **{name: "/etc/ssl/server.pem"}))  # a path instead of PEM text
    assert err.field == name


def test_load_ssl_config_missing_file(tmp_path) -> None:
    with pytest.raises(SSLConfigError, match=r"missing\.cfg: cannot read"):
        tlsmaterial.load_ssl_config(tmp_path / "missing.cfg")


@st.composite
def _mutations(draw: st.DrawFn, text: str) -> str:
    """A valid ssl.cfg with a few random characters deleted, inserted or replaced."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        ch = draw(st.sampled_from(list("\"'\\:{}<>#\n tnrux0_-=")))
        if op == "insert" or not chars or pos == len(chars):
            chars.insert(pos, ch)
        elif op == "delete":
            del chars[pos]
        else:
            chars[pos] = ch
    return "".join(chars)


def test_mutated_ssl_cfg_is_parsed_or_refused_cleanly(ec_material) -> None:
    """Fuzz: a damaged file either still parses (and then works for TLS) or raises SSLConfigError that
    quotes no key material."""
    original = ec_material.ssl_cfg.read_text()
    fragments = _pem_body_fragments(ec_material.server_key.read_text())

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutations(original))
    def check(text: str) -> None:
        try:
            cfg = tlsmaterial.parse_ssl_config(text, "fuzz.cfg")
        except SSLConfigError as exc:
            assert str(exc).startswith("fuzz.cfg")
            assert not any(f in str(exc) for f in fragments)
        else:
            # Whatever parses can be served, by both TLS stacks.
            assert tlsmaterial.server_ssl_context(cfg) is not None
            assert tlsmaterial.grpc_server_credentials(cfg) is not None

    check()
