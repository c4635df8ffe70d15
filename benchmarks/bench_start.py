#!/usr/bin/env python3
"""Server start-to-ready time: attestation + encrypted ResNet-50 vs the same start from plaintext.

    .venv/bin/python benchmarks/bench_start.py [--rounds 3] [--model resnet50|digits]

Issue 4 §8: the time from launching ``teeserve serve`` to gRPC health SERVING, for
  plain:     plaintext ResNet-50 ONNX model and plaintext ssl.cfg (mutual TLS), keys not needed;
  attested:  the same model and ssl.cfg as Gramine protected files, the wrap key obtained from a
             running ``teeserve broker`` by (simulated) attestation, decrypted in memory.
Both run back to back in interleaved rounds on this machine; printed: each time, the medians and the
ratio attested/plain (goal <= 1.3). The ResNet-50 model (random weights) is made once and cached in
bench-out/start/.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "start"
CN = "grpc.tf-serving.service.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(model: str) -> dict:
    from teeserve import models, pf, tlsmaterial
    from teeserve.attest import sim

    OUT.mkdir(parents=True, exist_ok=True)
    name = "resnet50-v15-fp32" if model == "resnet50" else "digits"
    plain = OUT / "plain"
    if not (plain / f"{name}-onnx").exists():
        print(f"making the {name} model once (cached in {plain}) ...", flush=True)
        if model == "resnet50":
            models.make_resnet50(plain, force=True)
        else:
            models.make_digits(plain, force=True)
    key_path = OUT / "wrap_key"
    if not key_path.exists():
        pf.write_wrap_key(key_path, pf.new_wrap_key())
    key = pf.load_wrap_key(key_path)
    tls = tlsmaterial.make_tls_material(OUT / "ssl", server_cn=CN, client_cn="client", server_ips=("127.0.0.1",),
                                        force=True)
    btls = tlsmaterial.make_tls_material(OUT / "broker_tls", server_cn="localhost", server_ips=("127.0.0.1",),
                                         force=True)
    enc = OUT / "enc"
    pf.encrypt_tree(plain / f"{name}-onnx", enc / f"{name}-onnx", key, overwrite=True)
    pf.encrypt_file(tls.ssl_cfg, enc / "ssl.cfg", key, overwrite=True)
    priv, pub = sim.init_key(OUT / "sim", force=True)
    return {"name": f"{name}-onnx", "plain": plain, "enc": enc, "tls": tls, "btls": btls, "key": key_path,
            "sim": (priv, pub)}


def wait_ready(proc: subprocess.Popen, port: int, tls, timeout: float = 600) -> float:
    creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), tls.client_key.read_bytes(),
                                         tls.client_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", CN)]) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == 1:
                    return time.monotonic()
            except grpc.RpcError:
                pass
            time.sleep(0.02)
    raise SystemExit("server not ready in time")


def start(argv: list[str], port: int, tls, log: Path) -> float:
    t0 = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "teeserve", "serve", *argv], stdout=fh, stderr=subprocess.STDOUT)
        try:
            return wait_ready(proc, port, tls) - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", choices=("resnet50", "digits"), default="resnet50")
    args = ap.parse_args()
    p = prepare(args.model)
    from teeserve.serving._flags import parse_serve_args
    from teeserve.serving._server import measurement

    bport = free_port()
    common = ["--host=127.0.0.1", f"--model_name={p['name']}", "--tensorflow_intra_op_parallelism=2",
              "--tensorflow_inter_op_parallelism=1", "--enable_model_warmup=false"]
    port = free_port()
    plain_argv = [*common, f"--port={port}", f"--model_base_path={p['plain'] / p['name']}",
                  f"--ssl_config_file={p['tls'].ssl_cfg}"]
    att_argv = [*common, f"--port={port}", f"--model_base_path={p['enc'] / p['name']}",
                f"--ssl_config_file={p['enc'] / 'ssl.cfg'}", "--require-encrypted", "--tee=sim",
                f"--sim-key={p['sim'][0]}", f"--key-broker=localhost:{bport}", f"--key-broker-ca={p['btls'].ca_cert}"]
    _, mr = measurement(parse_serve_args(att_argv))
    policy = OUT / "policy.toml"
    policy.write_text(f'version = 1\n[simulation]\ntrusted_keys = ["{p["sim"][1]}"]\n[secrets.default]\n'
                      f'file = "{p["key"]}"\ntee = ["sim"]\nallow_simulation = true\n'
                      f'[[secrets.default.sim]]\nmr_enclave = "{mr}"\n')
    broker = subprocess.Popen([sys.executable, "-m", "teeserve", "broker", "--policy", str(policy), "--listen",
                               f"127.0.0.1:{bport}", "--cert", str(p["btls"].server_cert), "--key",
                               str(p["btls"].server_key), "--audit", str(OUT / "audit.db")],
                              stdout=open(OUT / "broker.log", "wb"), stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        size = sum(f.stat().st_size for f in (p["plain"] / p["name"]).rglob("*") if f.is_file())
        print(f"model {p['name']}: {size / 1e6:.1f} MB; rounds: {args.rounds} (interleaved)")
        plain, att = [], []
        for r in range(args.rounds):
            plain.append(start(plain_argv, port, p["tls"], OUT / "plain.log"))
            att.append(start(att_argv, port, p["tls"], OUT / "attested.log"))
            print(f"  round {r + 1}: plain {plain[-1]:.2f} s, attested+encrypted {att[-1]:.2f} s", flush=True)
        mp, ma = statistics.median(plain), statistics.median(att)
        ratio = ma / mp
        print(f"start-to-ready median: plain {mp:.2f} s, attested+encrypted {ma:.2f} s")
        print(f"ratio attested/plain: {ratio:.2f} (goal <= 1.3: {'PASS' if ratio <= 1.3 else 'NOT MET'})")
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(30)


if __name__ == "__main__":
    main()
