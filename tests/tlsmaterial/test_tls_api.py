"""The public surface of teeserve.tlsmaterial: what the server and the CLI rely on."""

from __future__ import annotations

import dataclasses
import inspect

import teeserve
from teeserve import tlsmaterial


def test_exported_names_are_exactly_the_public_ones() -> None:
    public = {name for name in vars(tlsmaterial) if not name.startswith("_")}
    public -= {"annotations"}  # from __future__
    public -= {name for name, value in vars(tlsmaterial).items() if inspect.ismodule(value)}
    assert set(tlsmaterial.__all__) == public
    for name in tlsmaterial.__all__:
        assert getattr(tlsmaterial, name) is not None


def test_errors_are_teeserve_errors() -> None:
    for cls in (tlsmaterial.CertificateOptionsError, tlsmaterial.MaterialExists, tlsmaterial.SSLConfigError):
        assert issubclass(cls, tlsmaterial.TlsMaterialError)
    assert issubclass(tlsmaterial.TlsMaterialError, teeserve.TeeserveError)


def test_make_tls_material_signature() -> None:
    params = inspect.signature(tlsmaterial.make_tls_material).parameters
    assert list(params)[0] == "out_dir"
    expected = {"server_cn": inspect.Parameter.empty, "client_cn": None, "key_type": "ec-p256", "days": 365,
                "server_dns": (), "server_ips": (), "client_dns": (), "force": False}
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default


def test_sslconfig_is_a_frozen_dataclass() -> None:
    fields = [(f.name, f.type) for f in dataclasses.fields(tlsmaterial.SSLConfig)]
    assert fields == [("server_key", "str"), ("server_cert", "str"), ("custom_ca", "str"),
                      ("client_verify", "bool")]
    cfg = tlsmaterial.SSLConfig(server_key="k", server_cert="c")
    try:
        cfg.client_verify = True  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("SSLConfig is not frozen")
