"""The enclave's two key paths, against a laid-out /dev/attestation tree and a real provisioning server.

(a) gramine-mounts: ``teeserve gramine provision`` attests (RA-TLS certificate, quote read from the
    tree's ``quote`` after one 64-byte write to ``user_report_data``), receives the key and writes it
    with ONE 16-byte write to ``keys/<key_name>``; Gramine's encrypted mount, whose uri is the host
    path, then opens the model with that key (checked here with teeserve.pf, which implements the
    same format and path binding).
(b) in-process: the same attestation, then ``teeserve serve`` in the same process decrypts the
    protected model itself and serves it; nothing is written to ``keys/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve import deploy, pf
from teeserve.cli import main

from _deploy_helpers import CONTAINER_PYTHON, digits_weights, onnx_model_bytes

WRAP_KEY = bytes(range(100, 116))


class Broker:
    """A provisioning server (teeserve.provision, the key broker's front end) with a small policy:
    a verified RA-TLS certificate carrying a SIMULATED quote of the expected MRENCLAVE gets the key."""

    def __init__(self, tmp: Path, sim_public_key: Any, mr_enclave: bytes, secret: bytes = WRAP_KEY) -> None:
        from teeserve import tlsmaterial
        from teeserve.provision import ProvisionServer

        self.material = tlsmaterial.make_tls_material(tmp / "broker-tls", server_cn="localhost")
        self.sim_public_key = sim_public_key
        self.mr_enclave = mr_enclave
        self.secret = secret
        self.released = 0
        self.denied: list[str] = []
        self.server = ProvisionServer("127.0.0.1", 0, self.material.server_cert, self.material.server_key,
                                      self.authorize, timeout=5.0)

    def authorize(self, cert_der: bytes, peer: tuple[str, int]) -> bytes | None:
        from teeserve.attest import sim
        from teeserve.attest.ratls import verify_certificate

        try:
            evidence = verify_certificate(cert_der)
            verified = sim.verify_quote(evidence.quote, [self.sim_public_key])
        except Exception as exc:  # a refusal, recorded for the test
            self.denied.append(f"{type(exc).__name__}: {exc}")
            return None
        if verified.sgx is None or verified.sgx.mr_enclave != self.mr_enclave:
            self.denied.append("mr_enclave not allowed")
            return None
        self.released += 1
        return self.secret

    def __enter__(self) -> Broker:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def address(self) -> str:
        return f"localhost:{self.server.port}"


def _encrypted_model(model_dir: Path) -> bytes:
    """Write version 1 of the model, encrypted and bound to its own (absolute) host path."""
    plain = onnx_model_bytes()
    target = model_dir / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(pf.encrypt_bytes(plain, WRAP_KEY, os.fspath(target)))
    return plain


def _provision_args(tree: Any, broker: Broker, *extra: str) -> list[str]:
    return ["gramine", "provision", "--attestation-root", os.fspath(tree.root), "--broker", broker.address,
            "--broker-ca", os.fspath(broker.material.ca_cert), "--retries", "0", *extra]


def test_gramine_mounts_key_is_written_once_to_keys_name_and_opens_the_mounted_model(
    tmp_path: Path, attestation_tree: Any, sim_key: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    model_dir = tmp_path / "srv" / "models" / "digits"
    plain = _encrypted_model(model_dir)
    writes: list[tuple[str, int]] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        try:
            writes.append((os.readlink(f"/proc/self/fd/{fd}"), len(data)))
        except OSError:
            pass
        return real_write(fd, data)

    with Broker(tmp_path, sim_key[1], attestation_tree.mr_enclave) as broker:
        monkeypatch.setattr(os, "write", spy)
        rc = main(_provision_args(attestation_tree, broker, "--mode", "gramine-mounts", "--key-name", "default"))
        monkeypatch.undo()
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "installed in " + os.fspath(attestation_tree.key_file("default")) in captured.err
    assert WRAP_KEY.hex() not in captured.out + captured.err
    assert broker.released == 1 and not broker.denied
    assert attestation_tree.quotes >= 1  # the certificate's quote came through the tree's quote file
    key_path = os.fspath(attestation_tree.key_file("default"))
    assert [n for p, n in writes if p == key_path] == [16]  # exactly one write, of 16 bytes
    assert attestation_tree.key_file("default").read_bytes() == WRAP_KEY
    # report data: one 64-byte write per quote
    assert {n for p, n in writes if p.endswith("user_report_data")} == {64}

    # Gramine's side: the manifest mounts the model dir as an encrypted mount whose uri is the host path;
    # the file it opens must decrypt with the installed key and carry exactly that path.
    spec = deploy.ManifestSpec(model_name="digits", model_dir=os.fspath(model_dir), broker="teeserve-broker:4433",
                               broker_ca=os.fspath(broker.material.ca_cert), ssl_config=None)
    doc = tomllib.loads(deploy.render_manifest(spec, CONTAINER_PYTHON))
    [mount] = [m for m in doc["fs"]["mounts"] if m.get("type") == "encrypted"]
    host_dir = mount["uri"].removeprefix("file:")
    opened = os.path.join(host_dir, "1", "model.onnx")
    installed_key = attestation_tree.key_file(mount["key_name"]).read_bytes()
    with pf.open_reader(opened, installed_key, expected_path=pf.normalize_path(opened)) as reader:
        assert reader.read_all() == plain


def test_unknown_key_name_is_a_clear_error(tmp_path: Path, attestation_tree: Any, sim_key: Any, capsys: Any) -> None:
    with Broker(tmp_path, sim_key[1], attestation_tree.mr_enclave) as broker:
        rc = main(_provision_args(attestation_tree, broker, "--key-name", "models"))
    err = capsys.readouterr().err
    assert rc != 0
    assert "keys/models" in err and "key_name" in err
    assert WRAP_KEY.hex() not in err
    assert attestation_tree.key_file("default").read_bytes() == b""


def test_denied_enclave_gets_no_key_and_exits_nonzero(
    tmp_path: Path, attestation_tree: Any, sim_key: Any, capsys: Any
) -> None:
    with Broker(tmp_path, sim_key[1], mr_enclave=bytes(32)) as broker:  # policy pins another MRENCLAVE
        rc = main(_provision_args(attestation_tree, broker))
    assert rc != 0
    assert broker.denied == ["mr_enclave not allowed"] and broker.released == 0
    assert attestation_tree.key_file("default").read_bytes() == b""
    assert "without sending a secret" in capsys.readouterr().err


def test_wrong_attestation_type_is_refused(tmp_path: Path, attestation_tree: Any, sim_key: Any, capsys: Any) -> None:
    (attestation_tree.root / "attestation_type").write_bytes(b"none")
    with Broker(tmp_path, sim_key[1], attestation_tree.mr_enclave) as broker:
        rc = main(_provision_args(attestation_tree, broker))
    assert rc != 0
    assert "dcap" in capsys.readouterr().err
    assert broker.released == 0


def test_unreachable_broker_is_retried_then_reported(tmp_path: Path, attestation_tree: Any, capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from teeserve import tlsmaterial

    ca = tlsmaterial.make_tls_material(tmp_path / "tls", server_cn="localhost").ca_cert
    started = time.monotonic()
    rc = main(["gramine", "provision", "--attestation-root", os.fspath(attestation_tree.root),
               "--broker", f"localhost:{port}", "--broker-ca", os.fspath(ca), "--retries", "2"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("key broker not reachable, retrying") == 2
    assert "no secret-provisioning server accepted a connection" in err
    assert time.monotonic() - started < 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("memfd", ["with memfd_create", "without memfd_create"])
def test_in_process_mode_serves_the_protected_model_without_touching_gramine_keys(
    tmp_path: Path, attestation_tree: Any, sim_key: Any, memfd: str
) -> None:
    """... also where the OS has no memfd_create (Gramine's library OS: here os.memfd_create is
    removed before teeserve starts, so a key handed over through a memfd would fail the start)."""
    model_dir = tmp_path / "srv" / "models" / "digits"
    _encrypted_model(model_dir)
    rest = _free_port()
    python = [sys.executable, "-m", "teeserve"] if memfd == "with memfd_create" else [
        sys.executable, "-c", "import os, sys; del os.memfd_create; from teeserve.cli import main; "
        "sys.exit(main(sys.argv[1:]))"]
    with Broker(tmp_path, sim_key[1], attestation_tree.mr_enclave) as broker:
        argv = [*python, *_provision_args(attestation_tree, broker, "--mode", "in-process"),
                "--", "serve", "--model_name=digits", f"--model_base_path={model_dir}", "--port=0",
                f"--rest_api_port={rest}", "--host=127.0.0.1", "--file_system_poll_wait_seconds=0"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            ready = False
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v1/health/ready", timeout=2) as r:
                        ready = r.status == 200
                        break
                except OSError:
                    time.sleep(0.2)
            assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in 60 s"
            images = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8) / 100
            body = json.dumps({"instances": images.tolist()}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{rest}/v1/models/digits:predict", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                got = np.array(json.loads(r.read())["predictions"], dtype=np.float32)
            np.testing.assert_allclose(got, images.reshape(2, 64) @ digits_weights(), rtol=1e-5, atol=1e-5)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
    assert broker.released == 1
    assert attestation_tree.key_file("default").read_bytes() == b""  # Gramine's key store untouched
    assert "installed in this process's memory" in out
    assert WRAP_KEY.hex() not in out and "wrap_key" not in out.lower().replace("wrap key", "")


def test_in_process_mode_needs_a_serve_command(tmp_path: Path, attestation_tree: Any, capsys: Any) -> None:
    rc = main(["gramine", "provision", "--mode", "in-process", "--attestation-root", os.fspath(attestation_tree.root),
               "--broker", "localhost:1", "--broker-ca", "/nonexistent", "--", "client", "predict"])
    assert rc == 2
    assert "-- serve" in capsys.readouterr().err
