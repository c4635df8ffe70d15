"""The container health probe (``python -m teeserve.deploy.probe``) against a real ``teeserve serve`` with
mutual TLS on loopback: what the Kubernetes exec probes and the images' HEALTHCHECK run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from teeserve import tlsmaterial

from _deploy_helpers import onnx_model_bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEESERVE_PROBE_")}
    return subprocess.run([sys.executable, "-m", "teeserve.deploy.probe", *args], capture_output=True, text=True,
                          timeout=30, env=env)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("probe")
    tls = tlsmaterial.make_tls_material(tmp / "tls", server_cn="grpc.tf-serving.service.com", client_cn="probe")
    (tmp / "models" / "digits" / "1").mkdir(parents=True)
    (tmp / "models" / "digits" / "1" / "model.onnx").write_bytes(onnx_model_bytes())
    rest = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "teeserve", "serve", "--model_name=digits",
         f"--model_base_path={tmp / 'models' / 'digits'}", "--port=0", f"--rest_api_port={rest}",
         "--host=127.0.0.1", f"--ssl_config_file={tls.ssl_cfg}", "--file_system_poll_wait_seconds=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"https://127.0.0.1:{rest}/v1/health/ready"
    creds = ["--ca", os.fspath(tls.ca_cert), "--cert", os.fspath(tls.client_cert), "--key", os.fspath(tls.client_key)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if probe(url, *creds).returncode == 0:
            break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"server not ready: {proc.communicate()[1][-2000:]}")
    yield rest, tls, creds
    proc.terminate()
    proc.wait(30)


def test_ready_and_live_with_the_probe_client_certificate(mtls_server: Any) -> None:
    rest, _, creds = mtls_server
    for path in ("/v1/health/ready", "/v1/health/live"):
        r = probe(f"https://127.0.0.1:{rest}{path}", *creds)
        assert r.returncode == 0 and "HTTP 200" in r.stdout, r.stderr


def test_options_come_from_the_environment_as_in_the_images(mtls_server: Any) -> None:
    rest, tls, _ = mtls_server
    env = dict(os.environ, TEESERVE_PROBE_CA=os.fspath(tls.ca_cert), TEESERVE_PROBE_CERT=os.fspath(tls.client_cert),
               TEESERVE_PROBE_KEY=os.fspath(tls.client_key))
    r = subprocess.run([sys.executable, "-m", "teeserve.deploy.probe", f"https://127.0.0.1:{rest}/v1/health/live"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr


def test_without_a_client_certificate_mutual_tls_refuses(mtls_server: Any) -> None:
    rest, tls, _ = mtls_server
    r = probe(f"https://127.0.0.1:{rest}/v1/health/live", "--ca", os.fspath(tls.ca_cert))
    assert r.returncode == 1 and "unhealthy" in r.stderr


def test_server_certificate_is_verified(mtls_server: Any, tmp_path: Path) -> None:
    rest, _, creds = mtls_server
    other = tlsmaterial.make_tls_material(tmp_path / "other", server_cn="elsewhere", client_cn="x")
    r = probe(f"https://127.0.0.1:{rest}/v1/health/live", "--ca", os.fspath(other.ca_cert), *creds[2:])
    assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr
    named = probe(f"https://127.0.0.1:{rest}/v1/health/live", *creds, "--server-name", "grpc.tf-serving.service.com")
    assert named.returncode == 0, named.stderr
    wrong = probe(f"https://127.0.0.1:{rest}/v1/health/live", *creds, "--server-name", "evil.example")
    assert wrong.returncode == 1


def test_tcp_mode_and_usage() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert probe("--tcp", f"127.0.0.1:{s.getsockname()[1]}").returncode == 0
    assert probe("--tcp", f"127.0.0.1:{_free_port()}").returncode == 1
    assert probe().returncode == 2
