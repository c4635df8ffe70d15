"""Fixtures for the broker tests: a throwaway PKI, simulation keys, secrets, policies and a running
in-process broker on 127.0.0.1 (real TLS, real provisioning server, real SQLite audit)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeserve.attest import sim
from teeserve.broker import AuditLog, BrokerMetrics, KeyBroker, PolicyHolder, RateLimiter

from _broker_helpers import MR_ENCLAVE, policy_text, write_secrets

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


def _leaf(ca: tuple[Any, x509.Certificate], names: list[str]) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca[1].subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca[0], hashes.SHA256())
    )  # fmt: skip
    return key, cert


def _pem(path: Path, cert: x509.Certificate | None = None, key: Any = None) -> Path:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())  # fmt: skip
    path.write_bytes(data)
    return path


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = _ca("teeserve broker test CA"), _ca("another CA")
    k, c = _leaf(ca, ["localhost", "127.0.0.1"])
    return Pki(_pem(d / "ca.pem", ca[1]), _pem(d / "other-ca.pem", other[1]), _pem(d / "broker.pem", c),
               _pem(d / "broker.key", key=k))  # fmt: skip


@dataclass
class SimKeys:
    key: Path
    pub: Path
    key2: Path  # a second trusted key (for "wrong MRSIGNER")
    pub2: Path
    untrusted: Path  # a key no policy trusts

    @property
    def key_id(self) -> str:
        return sim.key_id(sim.load_public_key(self.pub)).hex()


@pytest.fixture(scope="session")
def sim_keys(tmp_path_factory: pytest.TempPathFactory) -> SimKeys:
    k1, p1 = sim.init_key(tmp_path_factory.mktemp("sim1"))
    k2, p2 = sim.init_key(tmp_path_factory.mktemp("sim2"))
    k3, _ = sim.init_key(tmp_path_factory.mktemp("sim3"))
    return SimKeys(k1, p1, k2, p2, k3)


@pytest.fixture(scope="session")
def mr_enclave() -> str:
    return MR_ENCLAVE.hex()


@dataclass
class Running:
    broker: KeyBroker
    server: Any
    holder: PolicyHolder
    audit: AuditLog
    metrics: BrokerMetrics
    policy_path: Path
    dir: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def rows(self) -> list[dict[str, Any]]:
        return list(self.audit.rows())


@pytest.fixture
def broker_dir(tmp_path: Path, sim_keys: SimKeys, mr_enclave: str) -> Path:
    write_secrets(tmp_path)
    (tmp_path / "policy.toml").write_text(policy_text(sim_keys, mr_enclave))
    return tmp_path


@pytest.fixture
def start_broker(broker_dir: Path, pki: Pki) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*, collateral: Any = None, rate: float = 1000.0, burst: int = 1000, timeout: float = 5.0,
              max_clients: int = 16, port: int = 0, have_collateral: bool | None = None,
              policy_path: Path | None = None, **kw: Any) -> Running:  # fmt: skip
        metrics = BrokerMetrics()
        path = policy_path or broker_dir / "policy.toml"
        holder = PolicyHolder(path, have_collateral=collateral is not None if have_collateral is None else have_collateral,
                              on_reload=metrics.on_reload)  # fmt: skip
        audit = AuditLog(broker_dir / "audit.db")
        broker = KeyBroker(holder, collateral=collateral, audit=audit, rate_limiter=RateLimiter(rate, burst),
                           metrics=metrics, **kw)  # fmt: skip
        server = broker.server("127.0.0.1", port, pki.cert, pki.key, max_clients=max_clients, timeout=timeout).start()
        r = Running(broker, server, holder, audit, metrics, path, broker_dir)
        started.append(r)
        return r

    yield start
    for r in started:
        r.server.stop()
        r.holder.stop()
        r.audit.close()


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
