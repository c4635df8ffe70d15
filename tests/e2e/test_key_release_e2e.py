"""Issue 4 §7, positive path end to end: broker + server in the simulated TEE + Predict over mutual TLS.

The server got its key only by attestation (no --wrap-key), decrypted the encrypted ssl.cfg and model in
memory, and serves the official TensorFlow Serving stubs over mutual TLS.
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from teeserve import models
from teeserve.broker import AuditLog

pytestmark = pytest.mark.slow


def _stub(dep, with_cert: bool = True):
    t = dep.tls
    creds = grpc.ssl_channel_credentials(t.ca_cert.read_bytes(),
                                         t.client_key.read_bytes() if with_cert else None,
                                         t.client_cert.read_bytes() if with_cert else None)
    channel = grpc.secure_channel(dep.grpc_url, creds,
                                  options=[("grpc.ssl_target_name_override", "grpc.tf-serving.service.com")])
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_predict_over_mutual_tls_with_the_official_stubs(deployment) -> None:
    sample = sorted(deployment.samples.glob("digit_4_*.png"))[0]
    x = models.digits_image_to_input(sample)[None, ...]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits-onnx"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(x.astype(np.float32)))
    channel, stub = _stub(deployment)
    with channel:
        resp = stub.Predict(req, timeout=30)
    probs = tf.make_ndarray(resp.outputs["probabilities"])
    assert int(np.argmax(probs[0])) == 4
    assert resp.model_spec.version.value == 1


def test_client_without_certificate_is_refused(deployment) -> None:
    channel, stub = _stub(deployment, with_cert=False)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits-onnx"
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Predict(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_release_is_audited_and_the_key_came_from_the_broker(deployment) -> None:
    log = AuditLog(deployment.audit)
    try:
        rows = [r for r in log.rows() if r["decision"] == "released"]
        assert log.verify() >= 1
    finally:
        log.close()
    assert rows and rows[0]["secret"] == "default" and rows[0]["simulated"]
    assert "--wrap-key" not in " ".join(deployment.server_argv)
    server_log = (deployment.root / "server.log").read_text()
    assert "keys obtained by attestation" in server_log
    key_hex = (deployment.root / "wrap_key").read_bytes().hex()
    assert key_hex not in server_log and key_hex not in (deployment.root / "broker.log").read_text()


def test_changed_code_is_denied_and_the_server_exits_nonzero(deployment, tmp_path) -> None:
    import os
    import shutil

    import teeserve

    copy = tmp_path / "code"
    shutil.copytree(os.path.dirname(teeserve.__file__), copy / "teeserve",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "teeserve" / "pf" / "__init__.py", "a") as fh:
        fh.write("\n# unreviewed change\n")
    env = dict(os.environ, PYTHONPATH=str(copy))
    out = subprocess.run([sys.executable, "-m", "teeserve", "serve", *deployment.server_argv],
                         capture_output=True, text=True, env=env, timeout=120, cwd=deployment.root)
    assert out.returncode != 0
    assert "denied" in out.stderr
    assert "Traceback" not in out.stderr
    log = AuditLog(deployment.audit)
    try:
        denied = [r for r in log.rows() if r["decision"] == "denied"]
    finally:
        log.close()
    assert denied and "mr_enclave" in denied[-1]["reason"]


def test_print_measurement_matches_the_policy(deployment) -> None:
    out = subprocess.run([sys.executable, "-m", "teeserve", "serve", *deployment.server_argv, "--print-measurement"],
                         capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in (deployment.root / "policy.toml").read_text()
