"""`serve --model-key MODEL=KEY` end to end: one key per model owner, each released by the broker by name.

Reuses the session deployment's material (TLS, simulation key, digits model, ssl.cfg encrypted with the
`default` key) and its helpers, but runs its own broker, whose policy holds two secrets: `default` (the
deployment's wrap key, which opens ssl.cfg) and `owner-b` (a fresh key, the only one the model is
encrypted with). A server started with `--secret default --secret owner-b --model-key digits-onnx=owner-b`
must attest, obtain both, decrypt the model in memory and answer Predict over mutual TLS; one that asks
for `--model-key digits-onnx=owner-b` without `--secret owner-b` must refuse to start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from teeserve import models, pf
from teeserve.attest import sim
from teeserve.cli import main
from teeserve.serving._flags import parse_serve_args
from teeserve.serving._server import measurement

pytestmark = pytest.mark.slow

MODEL = "digits-onnx"


@dataclass
class OwnerB:
    root: Path
    argv: list[str]  # --secret default --secret owner-b --model-key digits-onnx=owner-b
    argv_missing: list[str]  # the same without --secret owner-b
    mr: str
    mr_missing: str
    audit: Path
    broker: object  # subprocess.Popen


def _with(argv: list[str], **flags: str) -> list[str]:
    """``argv`` with the ``--name=value`` entries named in ``flags`` replaced."""
    out = [a for a in argv if a.split("=", 1)[0].lstrip("-") not in flags]
    return out + [f"--{name}={value}" for name, value in flags.items()]


@pytest.fixture(scope="module")
def e2e(request: pytest.FixtureRequest) -> ModuleType:
    """tests/e2e/conftest.py, the module pytest loaded, for its helpers. Not ``from conftest import``:
    which of the suite's conftest modules that name gives depends on the order of collection."""
    mine = Path(__file__).with_name("conftest.py")
    return next(p for p in request.config.pluginmanager.get_plugins()
                if isinstance(p, ModuleType) and Path(getattr(p, "__file__", "") or "") == mine)


@pytest.fixture(scope="module")
def owner_b(deployment, e2e: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnerB]:
    root = tmp_path_factory.mktemp("model_keys")
    key_b = root / "owner_b_key"
    pf.write_wrap_key(key_b, pf.new_wrap_key())
    assert pf.load_wrap_key(key_b) != pf.load_wrap_key(deployment.root / "wrap_key")
    pf.encrypt_tree(deployment.root / "plain" / MODEL, root / "host" / MODEL, pf.load_wrap_key(key_b))

    broker_port = e2e.free_port()
    base = _with(deployment.server_argv, model_base_path=str(root / "host" / MODEL),
                 port=str(e2e.free_port()), rest_api_port=str(e2e.free_port()),
                 **{"key-broker": f"localhost:{broker_port}"})
    argv = [*base, "--secret=default", "--secret=owner-b", f"--model-key={MODEL}=owner-b"]
    argv_missing = [*base, "--secret=default", f"--model-key={MODEL}=owner-b"]
    _, mr = measurement(parse_serve_args(argv))
    _, mr_missing = measurement(parse_serve_args(argv_missing))
    assert mr != mr_missing  # the flags are measured, so each command line is pinned on its own

    # `default` gates the session, so both command lines may have it; only the full one may have owner-b.
    pub = deployment.root / "sim" / sim.PUB_FILE
    policy = root / "policy.toml"
    policy.write_text(
        f'version = 1\n[simulation]\ntrusted_keys = ["{pub}"]\n'
        f'[secrets.default]\nfile = "{deployment.root / "wrap_key"}"\ntee = ["sim"]\n'
        f'allow_simulation = true\n'
        f'[[secrets.default.sim]]\nmr_enclave = "{mr}"\n'
        f'[[secrets.default.sim]]\nmr_enclave = "{mr_missing}"\n'
        f'[secrets.owner-b]\nfile = "{key_b}"\ntee = ["sim"]\nallow_simulation = true\n'
        f'[[secrets.owner-b.sim]]\nmr_enclave = "{mr}"\n'
    )
    audit = root / "audit.db"
    bt = deployment.broker_tls
    broker = e2e._spawn(root, "broker", [
        "broker", "--policy", str(policy), "--listen", f"127.0.0.1:{broker_port}",
        "--cert", str(bt.server_cert), "--key", str(bt.server_key), "--audit", str(audit)])
    try:
        yield OwnerB(root, argv, argv_missing, mr, mr_missing, audit, broker)
    finally:
        e2e._stop(broker)


def _audit_rows(capsys: pytest.CaptureFixture[str], audit: Path) -> list[dict]:
    capsys.readouterr()
    assert main(["broker", "audit", "--audit", str(audit), "--verify", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verify"]["ok"], doc["verify"]
    return doc["rows"]


def test_model_decrypts_with_its_owners_key_released_by_name(deployment, e2e, owner_b, capsys) -> None:
    grpc_port = next(a.split("=", 1)[1] for a in owner_b.argv if a.startswith("--port="))
    server = e2e._spawn(owner_b.root, "server", ["serve", *owner_b.argv])
    tls = deployment.tls
    creds = grpc.ssl_channel_credentials(tls.ca_cert.read_bytes(), tls.client_key.read_bytes(),
                                         tls.client_cert.read_bytes())
    channel = grpc.secure_channel(f"127.0.0.1:{grpc_port}", creds,
                                  options=[("grpc.ssl_target_name_override", e2e.SERVER_CN)])
    try:
        # Ready = the model's version is AVAILABLE; END (e.g. decrypted with the wrong key) fails at once.
        status = model_service_pb2_grpc.ModelServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            for name, proc in (("server", server), ("broker", owner_b.broker)):
                assert proc.poll() is None, f"{name} exited:\n{(owner_b.root / f'{name}.log').read_text()}"
            try:
                req = get_model_status_pb2.GetModelStatusRequest()
                req.model_spec.name = MODEL
                (v,) = status.GetModelStatus(req, timeout=1).model_version_status
            except grpc.RpcError:
                v = None
            if v is not None and v.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                break
            assert v is None or v.state != get_model_status_pb2.ModelVersionStatus.END, v.status.error_message
            assert time.monotonic() < deadline, \
                "server not ready:\n" + (owner_b.root / "server.log").read_text()
            time.sleep(0.3)

        sample = sorted(deployment.samples.glob("digit_7_*.png"))[0]
        req = predict_pb2.PredictRequest()
        req.model_spec.name = MODEL
        req.inputs["images"].CopyFrom(
            tf.make_tensor_proto(models.digits_image_to_input(sample)[None, ...].astype(np.float32)))
        resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30)
        assert int(np.argmax(tf.make_ndarray(resp.outputs["probabilities"])[0])) == 7
        assert resp.model_spec.name == MODEL and resp.model_spec.version.value == 1
    finally:
        channel.close()
        code = e2e._stop(server)
    assert code == 0, (owner_b.root / "server.log").read_text()

    released = {r["secret"] for r in _audit_rows(capsys, owner_b.audit)
                if r["decision"] == "released" and r["measurements"].get("mr_enclave") == owner_b.mr}
    assert released == {"default", "owner-b"}
    server_log = (owner_b.root / "server.log").read_text()
    assert "keys obtained by attestation secrets=['default', 'owner-b']" in server_log
    logs = server_log + (owner_b.root / "broker.log").read_text()
    assert (owner_b.root / "owner_b_key").read_bytes().hex() not in logs


def test_model_key_not_obtained_is_refused_at_start(owner_b, capsys) -> None:
    out = subprocess.run([sys.executable, "-m", "teeserve", "serve", *owner_b.argv_missing],
                         capture_output=True, text=True, timeout=30, cwd=owner_b.root)
    assert out.returncode != 0, out.stderr
    assert "does not hold: owner-b" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # Refused from its flags, before attesting: the broker never saw this measurement (no release
    # of `default` for a server that cannot serve).
    mine = [(r["secret"], r["decision"]) for r in _audit_rows(capsys, owner_b.audit)
            if r["measurements"].get("mr_enclave") == owner_b.mr_missing]
    assert mine == []
