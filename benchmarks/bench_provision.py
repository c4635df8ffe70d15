"""Attestations per second through Gramine's secret-provisioning protocol, simulated TEE, loopback.

One attestation = TCP connect + TLS handshake with the RA-TLS client certificate + the broker-side
check (RA-TLS key binding, then the SIMULATED quote's signature and MRENCLAVE) + request + secret.
The server runs in its own process (as the broker would); the client side runs N concurrent asyncio
tasks. Printed: attestations/s at concurrency 1 and 8 and their ratio, measured side by side in this
run, plus the cost of the pure verification step alone for comparison.

    .venv/bin/python benchmarks/bench_provision.py [--seconds 5] [--key-type ec-p384]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import multiprocessing as mp
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
from teeserve.attest import ratls, sim, verify_evidence
from teeserve.attest.evidence import SimProvider

MR_ENCLAVE = b"\x5a" * 32
KEY = bytes(range(16))


def _cert(subject: str, issuer: str, key, signer, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if not ca:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pki(d: Path) -> tuple[Path, Path, Path]:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("bench CA", "bench CA", ca_key, ca_key, ca=True)
    leaf = _cert("127.0.0.1", "bench CA", key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "server.pem").write_bytes(leaf.public_bytes(pem))
    (d / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "ca.pem", d / "server.pem", d / "server.key"


def _authorizer(pub_path: str):
    trusted = [sim.load_public_key(pub_path)]

    def authorize(cert_der: bytes, peer: tuple[str, int]) -> bytes | None:
        evidence = ratls.verify_certificate(cert_der)
        verified = verify_evidence(evidence.quote, collateral=None, sim_keys=trusted)
        if verified.sgx is None or verified.sgx.mr_enclave != MR_ENCLAVE:
            return None
        return KEY

    return authorize


def _serve(cert: str, key: str, pub_path: str, port_queue: mp.Queue, stop: mp.Event) -> None:
    import logging

    logging.disable(logging.WARNING)  # the SIMULATED warning per quote would dominate the profile
    authorize = _authorizer(pub_path)
    server = provision.ProvisionServer("127.0.0.1", 0, cert, key, authorize, max_clients=64).start()
    port_queue.put(server.port)
    stop.wait()
    server.stop()


async def _run(
    port: int, ca: Path, creds: list[ratls.RaTlsCredentials], concurrency: int, seconds: float
) -> list[float]:
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
    """utime + stime of a process (Linux /proc), to report the server's CPU cost per attestation."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per concurrency level")
    parser.add_argument("--key-type", default="ec-p384", choices=ratls.KEY_TYPES)
    args = parser.parse_args()

    import logging

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ca, cert, key = _pki(d)
        priv, pub = sim.init_key(d / "sim")
        provider = SimProvider(priv, mr_enclave=MR_ENCLAVE)
        creds = [ratls.make_certificate(provider, key_type=args.key_type) for _ in range(8)]

        # the pure broker-side check alone (no TLS), for scale
        trusted = [sim.load_public_key(pub)]
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            quote = ratls.verify_certificate(creds[0].cert_der).quote
            verify_evidence(quote, collateral=None, sim_keys=trusted)
            n += 1
        verify_rate = n / (time.perf_counter() - t0)

        ctx = mp.get_context("spawn")
        port_queue: mp.Queue = ctx.Queue()
        stop = ctx.Event()
        proc = ctx.Process(target=_serve, args=(str(cert), str(key), str(pub), port_queue, stop), daemon=True)
        proc.start()
        try:
            port = port_queue.get(timeout=60)
            asyncio.run(_run(port, ca, creds, 2, 0.5))  # warm-up
            results = {}
            for conc in (1, 8):
                cpu0, own0 = _cpu_seconds(proc.pid), time.process_time()
                lat = asyncio.run(_run(port, ca, creds, conc, args.seconds))
                server_cpu_ms = (_cpu_seconds(proc.pid) - cpu0) / len(lat) * 1000
                client_cpu_ms = (time.process_time() - own0) / len(lat) * 1000
                p99 = sorted(lat)[int(0.99 * (len(lat) - 1))]
                rate = len(lat) / args.seconds
                results[conc] = (rate, statistics.median(lat), p99, server_cpu_ms, client_cpu_ms)
        finally:
            stop.set()
            proc.join(10)

    print(
        f"secret provisioning, simulated TEE, RA-TLS key {args.key_type}, loopback, "
        f"{args.seconds:.0f} s per level"
    )
    print(f"  broker-side RA-TLS + sim-quote verification alone: {verify_rate:8.1f} /s")
    import os

    print(f"  (client and server share this machine's {os.cpu_count()} CPUs; the server has its own process)")
    for conc, (rate, p50, p99, cpu_ms, client_ms) in results.items():
        print(
            f"  concurrency {conc}: {rate:8.1f} attestations/s   "
            f"p50 {p50 * 1000:6.1f} ms   p99 {p99 * 1000:6.1f} ms"
            f"   CPU/attestation: server {cpu_ms:5.2f} ms, client {client_ms:5.2f} ms"
        )
    print(f"  ratio concurrency 8 / concurrency 1: {results[8][0] / results[1][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
