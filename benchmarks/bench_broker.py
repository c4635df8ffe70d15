#!/usr/bin/env python3
"""Attestations per second through the full key broker, next to the bare provisioning server.

    .venv/bin/python benchmarks/bench_broker.py [--seconds 5]
    TMPDIR=/dev/shm .venv/bin/python benchmarks/bench_broker.py    # audit on tmpfs: no fsync cost

One attestation = TCP connect + TLS handshake with an RA-TLS client certificate (SIMULATED quotes) +
Gramine's request + the secret. Two servers, each in its own process, measured side by side in
this run with the same clients (N concurrent asyncio tasks, pre-made certificates):

- bare:   ``provision.ProvisionServer`` whose ``authorize`` returns the key without any check
          (TLS + protocol only: the floor);
- broker: ``teeserve.broker`` as ``teeserve broker`` runs it: per-peer rate limit, RA-TLS key
          binding, SIMULATED quote verification, policy evaluation, the key file read, an audit row
          appended to SQLite (WAL, synchronous=FULL), metrics and an INFO log line per decision.

Printed: attestations/s at concurrency 1 and 8 for both, the broker/bare ratio, latency p50/p99,
and the server CPU time per attestation.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeserve import provision
from teeserve.attest import ratls, sim
from teeserve.attest.evidence import SimProvider

MR_ENCLAVE = b"\x5b" * 32
KEY = bytes(range(16))


def _cert(subject: str, key, ca_key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)  # fmt: skip
    return b.sign(ca_key, hashes.SHA256())


def _setup(d: Path) -> None:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(_cert("bench CA", ca_key, ca_key, ca=True).public_bytes(pem))
    (d / "server.pem").write_bytes(_cert("127.0.0.1", key, ca_key, ca=False).public_bytes(pem))
    (d / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))  # fmt: skip
    sim.init_key(d / "sim")
    (d / "wrap.key").write_bytes(KEY)
    (d / "policy.toml").write_text(
        f'version = 1\n[simulation]\ntrusted_keys = ["sim/{sim.PUB_FILE}"]\n'
        f'[secrets.default]\nfile = "wrap.key"\ntee = ["sim"]\nallow_simulation = true\n'
        f'[[secrets.default.sim]]\nmr_enclave = "{MR_ENCLAVE.hex()}"\n'
    )


def _serve(kind: str, d: str, port_queue: mp.Queue, stop: mp.Event) -> None:
    import logging

    root = Path(d)
    if kind == "bare":
        server = provision.ProvisionServer("127.0.0.1", 0, root / "server.pem", root / "server.key",
                                           lambda cert, peer: KEY, max_clients=64)  # fmt: skip
    else:
        from teeserve.broker import AuditLog, BrokerMetrics, KeyBroker, PolicyHolder, RateLimiter

        handler = logging.FileHandler(root / "broker.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        metrics = BrokerMetrics()
        holder = PolicyHolder(root / "policy.toml", have_collateral=False, on_reload=metrics.on_reload)
        broker = KeyBroker(holder, collateral=None, audit=AuditLog(root / "audit.db"),
                           rate_limiter=RateLimiter(1e6, 10**6), metrics=metrics)  # fmt: skip
        server = broker.server("127.0.0.1", 0, root / "server.pem", root / "server.key", max_clients=64)
    server.start()
    port_queue.put(server.port)
    stop.wait()
    server.stop()


async def _run(port: int, ca: Path, creds: list, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            secret = await provision.fetch_secret(f"127.0.0.1:{port}", ca, creds[i % len(creds)], timeout=30)
            latencies.append(time.perf_counter() - t0)
            assert secret == KEY

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measuring time per server and concurrency")  # fmt: skip
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the client process's own SIMULATED-provider warning
    with tempfile.TemporaryDirectory(prefix="bench_broker.") as tmp:
        d = Path(tmp)
        _setup(d)
        provider = SimProvider(d / "sim" / sim.KEY_FILE, mr_enclave=MR_ENCLAVE)
        creds = [ratls.make_certificate(provider) for _ in range(8)]
        ctx = mp.get_context("spawn")
        procs = {}
        try:
            for kind in ("bare", "broker"):
                q: mp.Queue = ctx.Queue()
                stop = ctx.Event()
                p = ctx.Process(target=_serve, args=(kind, tmp, q, stop), daemon=True)
                p.start()
                procs[kind] = (p, stop, q.get(timeout=60))
            results: dict[tuple[str, int], tuple[float, float, float, float]] = {}
            for kind, (p, _, port) in procs.items():
                asyncio.run(_run(port, d / "ca.pem", creds, 2, 0.5))  # warm-up
            for conc in (1, 8):
                for kind in ("bare", "broker", "bare", "broker"):  # interleaved: two rounds each, best kept
                    p, _, port = procs[kind]
                    cpu0 = _cpu_seconds(p.pid)
                    t0 = time.perf_counter()
                    lat = asyncio.run(_run(port, d / "ca.pem", creds, conc, args.seconds / 2))
                    wall = time.perf_counter() - t0
                    cpu = (_cpu_seconds(p.pid) - cpu0) / len(lat)
                    lat.sort()
                    row = (len(lat) / wall, statistics.median(lat), lat[int(0.99 * (len(lat) - 1))], cpu)
                    if (kind, conc) not in results or row[0] > results[(kind, conc)][0]:
                        results[(kind, conc)] = row
        finally:
            for p, stop, _ in procs.values():
                stop.set()
                p.join(10)
        audit_rows = 0
        if (d / "audit.db").exists():
            import sqlite3

            audit_rows = sqlite3.connect(d / "audit.db").execute("SELECT count(*) FROM audit").fetchone()[0]

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          "SIMULATED quotes, RA-TLS EC P-384, loopback")  # fmt: skip
    head = f"{'server':<8} {'conc':>4} {'attest/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{head} {'server CPU ms/attest':>21}")
    for conc in (1, 8):
        for kind in ("bare", "broker"):
            rate, p50, p99, cpu = results[(kind, conc)]
            print(f"{kind:<8} {conc:>4} {rate:>9.1f} {p50 * 1e3:>8.2f} {p99 * 1e3:>8.2f} {cpu * 1e3:>21.2f}")
    for conc in (1, 8):
        ratio = results[("broker", conc)][0] / results[("bare", conc)][0]
        print(f"ratio broker/bare at concurrency {conc}: {ratio:.2f}")
    print(f"audit rows written by the broker: {audit_rows} (SQLite WAL, synchronous=FULL: one fsync per row, "
          f"in {tempfile.gettempdir()}; TMPDIR=/dev/shm shows the cost without a disk)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
