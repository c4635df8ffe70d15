"""Fixtures for the provisioning tests: a throwaway CA and server certificates, the simulated TEE,
RA-TLS client credentials and a server factory bound to 127.0.0.1:0 (helpers in _provision_helpers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _provision_helpers import MR_ENCLAVE, Authorizer, Pki, make_ca, make_leaf, write_pem

from teeserve import provision
from teeserve.attest import ratls, sim
from teeserve.attest.evidence import SimProvider


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("teeserve test broker CA")
    other = make_ca("some other CA")
    skey, scert = make_leaf(ca, ["localhost", "127.0.0.1"])
    wkey, wcert = make_leaf(ca, ["other.example"])
    return Pki(
        ca_path=write_pem(d / "ca.pem", cert=ca[1]),
        other_ca_path=write_pem(d / "other-ca.pem", cert=other[1]),
        server_cert=write_pem(d / "server.pem", cert=scert),
        server_key=write_pem(d / "server.key", key=skey),
        wrong_name_cert=write_pem(d / "wrong.pem", cert=wcert),
        wrong_name_key=write_pem(d / "wrong.key", key=wkey),
        ca_cert=ca[1],
    )


@pytest.fixture(scope="session")
def sim_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sim.init_key(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="session")
def sim_provider(sim_keys: tuple[Path, Path]) -> SimProvider:
    return SimProvider(sim_keys[0], mr_enclave=MR_ENCLAVE)


@pytest.fixture(scope="session")
def credentials(sim_provider: SimProvider) -> ratls.RaTlsCredentials:
    return ratls.make_certificate(sim_provider)


@pytest.fixture
def authorizer(sim_keys: tuple[Path, Path]) -> Authorizer:
    return Authorizer(trusted=[sim.load_public_key(sim_keys[1])])


@pytest.fixture
def server_factory(pki: Pki, authorizer: Authorizer) -> Iterator[Callable[..., provision.ProvisionServer]]:
    servers: list[provision.ProvisionServer] = []

    def make(**kw: Any) -> provision.ProvisionServer:
        kw.setdefault("authorize", authorizer)
        cert = kw.pop("cert_path", pki.server_cert)
        key = kw.pop("key_path", pki.server_key)
        server = provision.ProvisionServer("127.0.0.1", 0, cert, key, **kw).start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()
