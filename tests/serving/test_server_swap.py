"""A version swap through a running ``teeserve serve`` under continuous gRPC and REST load.

``test_manager.py`` swaps versions inside the core (by polling); here the real server process gets a
``HandleReloadConfigRequest`` that moves a model from version 1 to version 2 while client threads send
Predicts without pause. TF Serving's rule, and teeserve's: the new version is loaded before the old one
is unloaded, so not one request fails, and once the reload has returned every answer comes from the
new version.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from test_server import ServerProcess, digits_request  # the same folder's helpers

pytestmark = pytest.mark.slow


def _config(base: Path, version: int) -> str:
    return (f"model_config_list {{ config {{ name: 'digits' base_path: '{base}' model_platform: 'onnx' "
            f"model_version_policy {{ specific {{ versions: {version} }} }} }} }}\n")


def test_reload_from_version_1_to_2_under_load_fails_no_request(tmp_path: Path, make_onnx_model: Any) -> None:
    base = tmp_path / "digits"
    make_onnx_model(base / "1", scale=1.0)
    make_onnx_model(base / "2", scale=2.0)
    config = tmp_path / "models.config"
    config.write_text(_config(base, 1))
    s = ServerProcess(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1", rest=True)
    x = np.random.default_rng(2).random((1, 8, 8), dtype=np.float32)
    stop = threading.Event()
    seen: list[tuple[float, int]] = []  # (time the request was sent, version that answered)
    errors: list[str] = []
    lock = threading.Lock()

    def grpc_client() -> None:
        with s.channel() as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            req = digits_request(images=x)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    v = stub.Predict(req, timeout=30).model_spec.version.value
                    with lock:
                        seen.append((t0, v))
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(f"gRPC {exc.code()}: {exc.details()}")

    def rest_client() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                t0 = time.monotonic()
                r = client.post(f"http://127.0.0.1:{s.rest_port}/v1/models/digits:predict",
                                json={"instances": x.tolist()}, timeout=30)
                if r.status_code != 200:
                    with lock:
                        errors.append(f"REST {r.status_code}: {r.text}")
                else:
                    with lock:
                        seen.append((t0, 0))  # REST answers do not name the version

    threads = [threading.Thread(target=grpc_client) for _ in range(3)] + [threading.Thread(target=rest_client)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        reload = model_management_pb2.ReloadConfigRequest()
        c = reload.config.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = "digits", str(base), "onnx"
        c.model_version_policy.specific.versions.append(2)
        with s.channel() as ch:
            status = model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(reload, timeout=60).status
        reloaded_at = time.monotonic()
        assert status.error_code == 0, status.error_message
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        code = s.stop()
    assert errors == []
    versions = [v for _, v in seen if v]
    assert versions[0] == 1 and versions[-1] == 2, versions[:3] + versions[-3:]
    # A request sent after the call returned is answered by the new version only.
    assert {v for t, v in seen if v and t > reloaded_at} == {2}
    assert sum(1 for _, v in seen if v == 0) > 0 and len(seen) > 50
    assert code == 0
