"""``teeserve serve`` as a real process (``python -m teeserve serve``) on 127.0.0.1: graceful SIGTERM drain,
mutual TLS on gRPC and REST with an encrypted ssl.cfg, logs, config polling, monitoring, bad setups."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_slow_model(version_dir: Path) -> None:
    """ONNX model: y = x + max(n), computed by a Loop of max(n) steps (its run time grows with n)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [-1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [-1])],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["n"], ["m"], keepdims=0),
         helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.array(True))),
         helper.make_node("Loop", ["m", "t", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow") / "slow"
    write_slow_model(base / "1")
    return base


def steps_for(seconds: float, slow_model_dir: Path) -> int:
    """Loop steps that take about ``seconds`` here (measured in-process, same onnxruntime)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(slow_model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    n = 100_000
    t = time.perf_counter()
    sess.run(None, {"x": np.zeros(1, np.float32), "n": np.array([n], np.int64)})
    per_step = (time.perf_counter() - t) / n
    return int(seconds / per_step)


def write_slow_loading_model(base: Path, record_seconds: float, records: int) -> Path:
    """Version 1 of the slow model under ``base``, with a warmup file of ``records`` Predicts of
    about ``record_seconds`` each: a version that stays LOADING for about ``records *
    record_seconds`` (the warmup runs before it is AVAILABLE; a server that stops interrupts it
    between two records, not within one). Returns ``base``."""
    from teeserve._proto import pb
    from teeserve.serving._tensors import ndarray_to_tensor_proto
    from teeserve.serving._warmup import WARMUP_FILE, write_tfrecords

    write_slow_model(base / "1")
    log = pb.PredictionLog()
    req = log.predict_log.request
    req.inputs["x"].CopyFrom(ndarray_to_tensor_proto(np.zeros(1, np.float32)))
    steps = max(1, steps_for(record_seconds, base))
    req.inputs["n"].CopyFrom(ndarray_to_tensor_proto(np.array([steps], np.int64)))
    warmup = base / "1" / WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    warmup.write_bytes(write_tfrecords([log.SerializeToString()] * records))
    return base


def wait_serving(ch: grpc.Channel, proc: subprocess.Popen[bytes], log: Callable[[], str], timeout: float = 90) -> None:
    """Poll gRPC health over ``ch`` until the server says SERVING; fail with ``log()`` if ``proc`` exits
    first or the time runs out."""
    deadline = time.monotonic() + timeout
    health = health_pb2_grpc.HealthStub(ch)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log()}")
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s:\n{log()}")


class ServerProcess:
    """``python -m teeserve serve ...`` with stderr captured to a file; waits until gRPC health is SERVING.
    ``tls``: (CA, client key, client certificate) for the client side; key and certificate may be None
    (a server that asks for no client certificate)."""

    def __init__(self, tmp: Path, *args: str, tls: tuple[bytes, bytes | None, bytes | None] | None = None,
                 rest: bool = False, wait_ready: bool = True, port_flags: bool = True, port: int = 0,
                 cwd: Path | None = None) -> None:
        self.port = port or free_port()
        self.rest_port = free_port() if rest else 0
        self.log_path = tmp / f"server-{self.port}.log"
        self.tls = tls
        argv = [sys.executable, "-m", "teeserve", "serve", "--host", "127.0.0.1", *args]
        if port_flags:
            argv.append(f"--port={self.port}")
            if rest:
                argv.append(f"--rest_api_port={self.rest_port}")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        if wait_ready:
            self.wait_ready()

    def channel(self, with_client_cert: bool = True) -> grpc.Channel:
        target = f"127.0.0.1:{self.port}"
        if self.tls is None:
            return grpc.insecure_channel(target)
        ca, key, cert = self.tls
        creds = grpc.ssl_channel_credentials(ca, key if with_client_cert else None, cert if with_client_cert else None)
        return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])

    def wait_ready(self, timeout: float = 90) -> None:
        with self.channel() as ch:
            wait_serving(ch, self.proc, self.log, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for s in started:
        s.stop()


def _slow_request(n: int) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "slow"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([0.0], np.float32)))
    req.inputs["n"].CopyFrom(tf.make_tensor_proto(np.array([n], np.int64)))
    return req


def digits_request(name: str = "digits", images: np.ndarray | None = None) -> predict_pb2.PredictRequest:
    """A Predict request for the digits test model, encoded by TensorFlow itself (the oracle)."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(
        np.full((1, 8, 8), 0.5, np.float32) if images is None else images))
    return req


@pytest.mark.parametrize("grpc_server", ["aio", "threads"])
def test_sigterm_finishes_in_flight_request_then_exits_0(tmp_path: Path, servers: list[ServerProcess],
                                                          slow_model_dir: Path, grpc_server: str) -> None:
    """On either gRPC server (--grpc-server): health answers while the model is busy (here with a single
    --grpc_max_threads thread, held by that request), SIGTERM refuses new calls, lets the one in flight
    finish, exits 0."""
    s = ServerProcess(tmp_path, "--model_name=slow", f"--model_base_path={slow_model_dir}", "--drain-timeout=30",
                      "--log-format=json", f"--grpc-server={grpc_server}", "--grpc_max_threads=1", rest=True)
    servers.append(s)
    n = steps_for(3.0, slow_model_dir)
    outcome: dict[str, Any] = {}
    with s.channel() as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

        def call(steps: int) -> None:
            try:
                outcome["response"] = stub.Predict(_slow_request(steps), timeout=120)
                outcome["done_at"] = time.monotonic()
            except grpc.RpcError as exc:  # pragma: no cover - reported by the assertion below
                outcome["error"] = (exc.code(), exc.details())

        for _attempt in range(4):  # the machine may be faster than calibrated: make sure it is in flight
            outcome.clear()
            t = threading.Thread(target=call, args=(n,))
            t.start()
            time.sleep(0.5)
            if t.is_alive():
                break
            n *= 4
        else:
            raise AssertionError("could not get a request to stay in flight")
        # Liveness and readiness answer while the model is busy (inference runs off the event loop).
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "liveness"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
        signal_at = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Draining: new requests are refused (on a fresh connection) while the old one finishes.
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as fresh:
            with pytest.raises(grpc.RpcError) as refused:
                prediction_service_pb2_grpc.PredictionServiceStub(fresh).Predict(_slow_request(1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        t.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert tf.make_ndarray(outcome["response"].outputs["y"]).tolist() == [float(n)]  # the full computation
    assert outcome["done_at"] > signal_at  # it was still in flight when SIGTERM arrived
    assert s.proc.wait(30) == 0
    assert time.monotonic() - signal_at < 25
    lines = [json.loads(line) for line in s.log().splitlines() if line.startswith("{")]
    messages = [rec["message"] for rec in lines]
    assert any(m.startswith("SIGTERM received: draining") for m in messages)
    assert [rec.get("grpc_server") for rec in lines if rec["message"] == "gRPC API listening"] == [grpc_server]
    assert messages[-1] == "stopped"
    assert all({"time", "level", "logger", "message"} <= set(rec) for rec in lines)


@pytest.mark.parametrize("grpc_server", ["aio", "threads"])
def test_drain_is_bounded_by_drain_timeout(tmp_path: Path, servers: list[ServerProcess], slow_model_dir: Path,
                                           grpc_server: str) -> None:
    s = ServerProcess(tmp_path, "--model_name=slow", f"--model_base_path={slow_model_dir}", "--drain-timeout=1",
                      f"--grpc-server={grpc_server}")
    servers.append(s)
    n = steps_for(40, slow_model_dir)
    with s.channel() as ch:
        future = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict.future(_slow_request(n), timeout=120)
        time.sleep(0.8)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
        took = time.monotonic() - t0
        with pytest.raises(grpc.RpcError):
            future.result(30)
    assert took < 20, f"drain took {took:.1f}s with --drain-timeout=1 and a ~40 s request"
    assert "did not finish within --drain-timeout" in s.log()


def test_plaintext_warning_and_unix_socket(tmp_path: Path, servers: list[ServerProcess], onnx_model_dir: Path) -> None:
    sock = tmp_path / "grpc.sock"
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={onnx_model_dir}",
                      f"--grpc_socket_path={sock}")
    servers.append(s)
    with s.channel() as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=30)
    assert resp.model_spec.version.value == 1
    with grpc.insecure_channel(f"unix:{sock}") as uds:  # TF Serving's --grpc_socket_path (testPredictUDS)
        resp = prediction_service_pb2_grpc.PredictionServiceStub(uds).Predict(digits_request(), timeout=30)
    assert resp.model_spec.name == "digits"
    assert s.stop() == 0
    assert "NO TLS" in s.log() and "PLAINTEXT" in s.log()


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from teeserve import tlsmaterial

    out = tmp_path_factory.mktemp("tls") / "ssl_configure"
    tlsmaterial.make_tls_material(out, server_cn="localhost", client_cn="requester", server_dns=["localhost"],
                                  server_ips=["127.0.0.1"])
    return out


@pytest.mark.parametrize("event_loop, runs_on", [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_mutual_tls_on_grpc_and_rest_with_encrypted_ssl_cfg_and_model(
        tmp_path: Path, servers: list[ServerProcess], tls_dir: Path, encrypted_onnx_model_dir: Path,
        wrap_key: bytes, event_loop: str, runs_on: str) -> None:
    import httpx

    from teeserve import pf

    key_file = tmp_path / "wrap_key"
    key_file.write_bytes(wrap_key)
    key_file.chmod(0o600)
    enc_cfg = tmp_path / "ssl.cfg"
    pf.encrypt_file(tls_dir / "ssl.cfg", enc_cfg, wrap_key)
    assert b"PRIVATE KEY" not in enc_cfg.read_bytes()
    ca = (tls_dir / "ca_cert.pem").read_bytes()
    ckey, ccert = (tls_dir / "client" / "key.pem").read_bytes(), (tls_dir / "client" / "cert.pem").read_bytes()
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={encrypted_onnx_model_dir}",
                      f"--ssl_config_file={enc_cfg}", "--wrap-key", str(key_file), f"--event-loop={event_loop}",
                      rest=True, tls=(ca, ckey, ccert))
    servers.append(s)

    # gRPC, official stub, with the client certificate.
    with s.channel() as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=30)
        assert resp.model_spec.name == "digits"
    # gRPC without a client certificate: the handshake is refused.
    with s.channel(with_client_cert=False) as ch:
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # Plaintext gRPC to the TLS port does not get through either.
    with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        with pytest.raises(grpc.RpcError):
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=10)

    # REST over mutual TLS.
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.load_cert_chain(tls_dir / "client" / "cert.pem", tls_dir / "client" / "key.pem")
    with httpx.Client(verify=ctx) as client:
        r = client.get(f"https://localhost:{s.rest_port}/v1/models/digits", timeout=10)
        assert r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE"
    no_cert = ssl.create_default_context(cadata=ca.decode())
    with httpx.Client(verify=no_cert) as client:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            client.get(f"https://localhost:{s.rest_port}/v1/models/digits", timeout=10)
    log = s.log()
    assert f"event loop: {runs_on}" in log
    assert "NO TLS" not in log
    assert "ssl_config_encrypted=True" in log
    assert "PRIVATE KEY" not in log


def test_server_only_tls_when_client_verify_is_false(tmp_path: Path, servers: list[ServerProcess], tls_dir: Path,
                                                     onnx_model_dir: Path) -> None:
    """``client_verify: false``: TLS on both APIs, no client certificate asked for; plaintext is still
    refused on both ports."""
    import httpx

    text = (tls_dir / "ssl.cfg").read_text()
    assert "client_verify: true" in text
    cfg = tmp_path / "ssl.cfg"
    cfg.write_text(text.replace("client_verify: true", "client_verify: false"))
    ca = (tls_dir / "ca_cert.pem").read_bytes()
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={onnx_model_dir}", f"--ssl_config_file={cfg}",
                      rest=True, tls=(ca, None, None))  # TLS without a client certificate, readiness included
    servers.append(s)
    with s.channel() as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=30)
        assert resp.model_spec.name == "digits"
    with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
        with pytest.raises(grpc.RpcError):
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(), timeout=10)
    ctx = ssl.create_default_context(cadata=ca.decode())
    r = httpx.get(f"https://localhost:{s.rest_port}/v1/models/digits", verify=ctx, timeout=10)
    assert r.status_code == 200 and r.json()["model_version_status"][0]["state"] == "AVAILABLE"
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        httpx.get(f"http://127.0.0.1:{s.rest_port}/v1/models/digits", timeout=10)
    assert "tls=server-only" in s.log(), s.log()


def test_reference_deployment_command_line_serves(tmp_path: Path, servers: list[ServerProcess], tls_dir: Path,
                                                  onnx_model_dir: Path) -> None:
    """reference-deployment.md step 2.4, program name changed; only the ports (free ones), the model
    directory and the loopback bind address differ (tests bind 127.0.0.1 only)."""
    import shutil

    import httpx

    models = tmp_path / "models" / "resnet50-v15-fp32"
    shutil.copytree(onnx_model_dir, models)
    shutil.copy(tls_dir / "ssl.cfg", tmp_path / "ssl.cfg")
    port, rest_port = free_port(), free_port()
    argv = (f"--model_name=resnet50-v15-fp32 --model_base_path={models} --port={port} --rest_api_port={rest_port} "
            "--enable_model_warmup=true --flush_filesystem_caches=false --enable_batching=false "
            "--ssl_config_file=ssl.cfg --rest_api_num_threads=64 --tensorflow_session_parallelism=0 "
            "--tensorflow_intra_op_parallelism=2 --tensorflow_inter_op_parallelism=2 "
            "--file_system_poll_wait_seconds=5").split()
    ca = (tls_dir / "ca_cert.pem").read_bytes()
    client = ((tls_dir / "client" / "key.pem").read_bytes(), (tls_dir / "client" / "cert.pem").read_bytes())
    s = ServerProcess(tmp_path, *argv, tls=(ca, *client), port_flags=False, port=port, cwd=tmp_path)
    servers.append(s)
    with s.channel() as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
            digits_request("resnet50-v15-fp32"), timeout=30)
    assert resp.model_spec.name == "resnet50-v15-fp32"
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.load_cert_chain(tls_dir / "client" / "cert.pem", tls_dir / "client" / "key.pem")
    r = httpx.get(f"https://localhost:{rest_port}/v1/models/resnet50-v15-fp32", verify=ctx, timeout=10)
    assert r.status_code == 200
    assert "ssl.cfg is a plaintext file" in s.log()  # the reference deployment's defect is called out


def test_model_config_file_polling_and_monitoring(tmp_path: Path, servers: list[ServerProcess],
                                                 onnx_model_dir: Path) -> None:
    import httpx

    config = tmp_path / "models.config"

    def write_config(names: list[str]) -> None:
        entries = "".join(f"config {{ name: '{n}' base_path: '{onnx_model_dir}' model_platform: 'onnx' }} "
                          for n in names)
        tmp = tmp_path / "models.config.tmp"
        tmp.write_text(f"model_config_list {{ {entries}}}\n")
        tmp.replace(config)

    write_config(["a"])
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics/tf" }\n')
    s = ServerProcess(tmp_path, f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                      f"--monitoring_config_file={monitoring}", rest=True)
    servers.append(s)
    with s.channel() as ch:
        models = model_service_pb2_grpc.ModelServiceStub(ch)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        assert stub.Predict(digits_request("a"), timeout=30).model_spec.name == "a"
        write_config(["a", "b"])
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "b"
        deadline = time.monotonic() + 30
        while True:
            try:
                if models.GetModelStatus(req, timeout=5).model_version_status[0].state == 30:
                    break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.2)
        assert stub.Predict(digits_request("b"), timeout=30).model_spec.name == "b"
    text = httpx.get(f"http://127.0.0.1:{s.rest_port}/metrics/tf", timeout=10).text
    assert ':tensorflow:serving:request_count{model_name="b",status="OK"}' in text
    assert 'protocol="GRPC"' in text


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("bad_ssl", "ssl.cfg"),
        ("missing_ssl", "--ssl_config_file"),
        ("wrong_key", "ssl.cfg"),
        ("port_in_use", "cannot listen for gRPC"),
        ("bad_monitoring", "--monitoring_config_file"),
        ("label_on_missing_version", "Request to assign label to version 7 of model digits"),
        ("bad_model_config", "models.config"),
    ],
)
def test_bad_setups_fail_with_one_clear_line(tmp_path: Path, tls_dir: Path, onnx_model_dir: Path,
                                             wrap_key: bytes, setup: str, message: str) -> None:
    from teeserve import pf

    args = ["--model_name=digits", f"--model_base_path={onnx_model_dir}", "--host", "127.0.0.1",
            f"--port={free_port()}"]
    blocker = None
    if setup == "bad_ssl":
        (tmp_path / "ssl.cfg").write_text('server_key: "not a key"\nserver_cert: "x"\n')
        args.append(f"--ssl_config_file={tmp_path / 'ssl.cfg'}")
    elif setup == "missing_ssl":
        args.append(f"--ssl_config_file={tmp_path / 'nope.cfg'}")
    elif setup == "wrong_key":
        pf.encrypt_file(tls_dir / "ssl.cfg", tmp_path / "ssl.cfg", wrap_key)
        (tmp_path / "k").write_bytes(bytes(16))
        args += [f"--ssl_config_file={tmp_path / 'ssl.cfg'}", "--wrap-key", str(tmp_path / "k")]
    elif setup == "port_in_use":
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        args.append(f"--port={blocker.getsockname()[1]}")
    elif setup == "bad_monitoring":
        (tmp_path / "mon.cfg").write_text("prometheus_config { nope: 1 }")
        args += [f"--monitoring_config_file={tmp_path / 'mon.cfg'}", f"--rest_api_port={free_port()}"]
    elif setup == "label_on_missing_version":
        (tmp_path / "models.config").write_text(
            f"model_config_list {{ config {{ name: 'digits' base_path: '{onnx_model_dir}' model_platform: 'onnx' "
            "version_labels { key: 'stable' value: 7 } } }")
        args.append(f"--model_config_file={tmp_path / 'models.config'}")
    elif setup == "bad_model_config":
        (tmp_path / "models.config").write_text("model_config_list { config { name: 'x' base_path: ")
        args.append(f"--model_config_file={tmp_path / 'models.config'}")
    try:
        out = subprocess.run([sys.executable, "-m", "teeserve", "serve", *args], capture_output=True, text=True,
                             timeout=120)
    finally:
        if blocker is not None:
            blocker.close()
    assert out.returncode in (1, 2), out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("teeserve: error:") and message in last, out.stderr
    assert "Traceback" not in out.stderr
    assert "BEGIN" not in out.stderr  # no PEM text from ssl.cfg in errors


def test_onnx_only_server_does_not_import_tensorflow(tmp_path: Path, onnx_model_dir: Path) -> None:
    port = free_port()
    code = f"""
import asyncio, sys
from teeserve.serving._flags import parse_serve_args
from teeserve.serving._server import ModelServer, configure_logging
configure_logging("text", "warning")
async def main():
    s = ModelServer(parse_serve_args(["--model_name=digits", "--model_base_path={onnx_model_dir}",
                                      "--port={port}", "--host=127.0.0.1"]))
    await s.start()
    for _ in range(600):
        if s.core.is_ready() and s._loaded:
            break
        await asyncio.sleep(0.05)
    hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]  # peak RSS of this image, KiB
    print("ready", s.core.is_ready(), "tensorflow" in sys.modules, hwm)
    await s.drain()
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ready, tf_loaded, max_rss_kib = out.stdout.split()[1:4]
    assert (ready, tf_loaded) == ("True", "False")
    print(f"ONNX-only server peak RSS: {int(max_rss_kib) / 1024:.0f} MiB")


def test_ssl_config_key_decrypts_ssl_cfg_with_a_named_key(tls_dir: Path, tmp_path: Path) -> None:
    """--ssl-config-key ops: the TLS material is the operator's, encrypted with its own key; the
    server refuses to start (before attesting) when its flags will not give it that key."""
    import asyncio
    import os

    from teeserve import pf
    from teeserve._errors import UsageError
    from teeserve.serving._flags import parse_serve_args
    from teeserve.serving._server import ModelServer, ServeError

    ops_key, owner_key = os.urandom(16), os.urandom(16)
    enc = tmp_path / "ssl.cfg"
    pf.encrypt_file(tls_dir / "ssl.cfg", enc, ops_key)
    args = [f"--model_base_path={tmp_path}", "--port=8500", f"--ssl_config_file={enc}"]

    server = ModelServer(parse_serve_args([*args, "--ssl-config-key=ops"]),
                         keys={"default": owner_key, "ops": ops_key})
    asyncio.run(server.obtain_keys())
    setup = server.load_tls()
    assert setup.protected and setup.ssl_context is not None and setup.grpc_credentials is not None

    wrong = ModelServer(parse_serve_args(args), keys={"default": owner_key, "ops": ops_key})
    asyncio.run(wrong.obtain_keys())
    with pytest.raises(ServeError, match="--ssl_config_file"):
        wrong.load_tls()  # the default key is the model owner's: not this file's

    # --require-encrypted: a plaintext ssl.cfg (one the host put in the encrypted one's place) is refused.
    plain = ModelServer(parse_serve_args([f"--model_base_path={tmp_path}", "--port=8500",
                                          f"--ssl_config_file={tls_dir / 'ssl.cfg'}", "--require-encrypted"]),
                        keys={"default": owner_key})
    asyncio.run(plain.obtain_keys())
    with pytest.raises(ServeError, match=r"ssl.cfg: not a protected file, and --require-encrypted refuses plaintext"):
        plain.load_tls()
    strict = ModelServer(parse_serve_args([*args, "--ssl-config-key=ops", "--require-encrypted"]), keys={"ops": ops_key})
    asyncio.run(strict.obtain_keys())
    assert strict.load_tls().protected  # an encrypted one still loads

    missing = ModelServer(parse_serve_args([*args, "--ssl-config-key=ops"]), keys={"default": owner_key})
    with pytest.raises(ServeError, match="--ssl-config-key ops: this server does not hold that key"):
        missing._check_key_names(missing._expected_key_names())
    with pytest.raises(UsageError, match="--ssl-config-key"):
        parse_serve_args([*args, "--ssl-config-key= ops"])
