"""End-to-end fixtures: one real deployment on loopback (broker + server in the simulated TEE).

Built once per session with the real commands' library calls: the digits demo model, a wrap key, TLS
material, encrypted model and ssl.cfg, a simulation key, a policy pinning the server's measurement,
then `python -m teeserve broker` and `python -m teeserve serve --tee sim --key-broker ...` processes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVER_CN = "grpc.tf-serving.service.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    root: Path
    grpc_port: int
    rest_port: int
    broker_port: int
    tls: object  # tlsmaterial.TlsMaterial
    broker_tls: object
    samples: Path
    audit: Path
    server_argv: list[str]
    procs: dict[str, subprocess.Popen]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def tls_args(self) -> list[str]:
        t = self.tls
        return ["--ca", str(t.ca_cert), "--crt", str(t.client_cert), "--key", str(t.client_key),
                "--server-name", SERVER_CN]


def _spawn(root: Path, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    log = open(root / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "teeserve", *argv], stdout=log, stderr=subprocess.STDOUT,
                            cwd=root, env=env)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    from teeserve import models, pf, tlsmaterial
    from teeserve.attest import sim
    from teeserve.serving._flags import parse_serve_args
    from teeserve.serving._server import measurement

    root = tmp_path_factory.mktemp("e2e")
    made = models.make_digits(root / "plain", samples_out=root / "samples")
    key_path = root / "wrap_key"
    pf.write_wrap_key(key_path, pf.new_wrap_key())
    key = pf.load_wrap_key(key_path)
    tls = tlsmaterial.make_tls_material(root / "ssl", server_cn=SERVER_CN, client_cn="client.tf-serving.service.com",
                                        server_ips=("127.0.0.1",))
    broker_tls = tlsmaterial.make_tls_material(root / "broker_tls", server_cn="localhost", server_ips=("127.0.0.1",))
    pf.encrypt_tree(root / "plain" / "digits-onnx", root / "host" / "digits-onnx", key)
    pf.encrypt_file(tls.ssl_cfg, root / "host" / "ssl.cfg", key)
    priv, pub = sim.init_key(root / "sim")
    grpc_port, rest_port, broker_port = free_port(), free_port(), free_port()
    server_argv = [
        "--model_name=digits-onnx", f"--model_base_path={root / 'host' / 'digits-onnx'}",
        f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
        f"--ssl_config_file={root / 'host' / 'ssl.cfg'}", "--require-encrypted",
        "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
        "--tee=sim", f"--sim-key={priv}", f"--key-broker=localhost:{broker_port}",
        f"--key-broker-ca={broker_tls.ca_cert}", "--key-broker-timeout=60",
    ]
    _, mr = measurement(parse_serve_args(server_argv))
    policy = root / "policy.toml"
    policy.write_text(
        f'version = 1\n[simulation]\ntrusted_keys = ["{pub}"]\n'
        f'[secrets.default]\nfile = "{key_path}"\ntee = ["sim"]\nallow_simulation = true\n'
        f'[[secrets.default.sim]]\nmr_enclave = "{mr}"\n'
    )
    audit = root / "audit.db"
    procs = {"broker": _spawn(root, "broker", [
        "broker", "--policy", str(policy), "--listen", f"127.0.0.1:{broker_port}",
        "--cert", str(broker_tls.server_cert), "--key", str(broker_tls.server_key), "--audit", str(audit)])}
    procs["server"] = _spawn(root, "server", ["serve", *server_argv])
    dep = Deployment(root, grpc_port, rest_port, broker_port, tls, broker_tls, root / "samples", audit,
                     server_argv, procs)
    try:
        creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), tls.client_key.read_bytes(),
                                             tls.client_cert.read_bytes())
        channel = grpc.secure_channel(dep.grpc_url, creds, options=[("grpc.ssl_target_name_override", SERVER_CN)])
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{(root / f'{name}.log').read_text()}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server not ready:\n" + (root / "server.log").read_text())
            time.sleep(0.3)
        channel.close()
        assert made.accuracy > 0.9
        yield dep
    finally:
        for proc in procs.values():
            _stop(proc)
