"""Fixtures for the TLS material tests: sets of material made once per session."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from teeserve import tlsmaterial

from _tls_helpers import CLIENT_CN, SERVER_CN


@pytest.fixture(scope="session")
def make_material(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tlsmaterial.TlsMaterial]:
    """Make (and cache) a set of TLS material; keyword arguments go to make_tls_material."""
    cache: dict[tuple, tlsmaterial.TlsMaterial] = {}

    def make(**kwargs: object) -> tlsmaterial.TlsMaterial:
        kwargs.setdefault("server_cn", SERVER_CN)
        kwargs.setdefault("client_cn", CLIENT_CN)
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("tls") / "ssl_configure"
            cache[key] = tlsmaterial.make_tls_material(out, **kwargs)  # type: ignore[arg-type]
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ec_material(make_material: Callable[..., tlsmaterial.TlsMaterial]) -> tlsmaterial.TlsMaterial:
    return make_material(server_ips=["127.0.0.1"])


@pytest.fixture(scope="session")
def other_ca_material(make_material: Callable[..., tlsmaterial.TlsMaterial]) -> tlsmaterial.TlsMaterial:
    """A second, unrelated set with the same names: its certificates must not be accepted by the first."""
    return make_material(server_ips=["127.0.0.1"], ca_cn="another owner CA")


@pytest.fixture(scope="session")
def oneway_material(make_material: Callable[..., tlsmaterial.TlsMaterial]) -> tlsmaterial.TlsMaterial:
    return make_material(client_cn=None)
