"""The gRPC front end over the real serving core (ONNX, SavedModel, tf.Example models), real gRPC on
127.0.0.1, the official tensorflow-serving-api stubs as the client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from teeserve.serving._config import ModelConfig
from teeserve.serving._grpc import GrpcFrontEnd, server_options
from teeserve.serving._metrics import Metrics

from test_grpc import _ALLOWED, _predict_requests  # the fuzz strategy of the fake-core tests (same folder)


class Served:
    """``threaded``: gRPC's thread-pool server with Predict in its workers (what ``teeserve serve``
    runs) instead of grpc.aio; both must behave the same."""

    def __init__(self, loop_thread: Any, core: Any, threaded: bool = False) -> None:
        self.loop_thread = loop_thread
        self.core = core
        self.threaded = threaded
        self.front: GrpcFrontEnd = loop_thread.run(self._make())
        self.port: int = loop_thread.run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    async def _make(self) -> GrpcFrontEnd:
        return GrpcFrontEnd(self.core, metrics=Metrics(process_collector=False), threaded=self.threaded)

    async def _start(self) -> int:
        if self.threaded:
            self.server = grpc.server(ThreadPoolExecutor(8), options=server_options())
            self.front.add_to_threaded_server(self.server, asyncio.get_running_loop())
        else:
            self.server = grpc.aio.server(options=server_options())
            self.front.add_to_server(self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.front.init_health()
        if self.threaded:
            self.server.start()
        else:
            await self.server.start()
        await self.front.set_ready(self.core.is_ready())
        return port

    def close(self) -> None:
        self.channel.close()
        if self.threaded:
            self.server.stop(None).wait(30)
        else:
            self.loop_thread.run(self.server.stop(None))


@pytest.fixture(params=["aio", "threaded"])
def served(request: pytest.FixtureRequest, loop_thread: Any, make_core: Any, onnx_model_dir: Path,
           saved_model_dir: Path, classify_model_dir: Path) -> Iterator[Served]:
    core = make_core([ModelConfig("digits", str(onnx_model_dir)),
                      ModelConfig("digits_tf", str(saved_model_dir)),
                      ModelConfig("examples", str(classify_model_dir))])
    s = Served(loop_thread, core, threaded=request.param == "threaded")
    yield s
    s.close()


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


def _reference(onnx_model_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(onnx_model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, classes = sess.run(["probabilities", "classes"], {"images": images})
    return {"probabilities": probs, "classes": classes}


@pytest.mark.parametrize("model", ["digits", "digits_tf"])
def test_predict_matches_in_process_onnxruntime(served: Served, onnx_model_dir: Path, model: str) -> None:
    images = _images()
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    resp = served.stub.Predict(req, timeout=30)
    ref = _reference(onnx_model_dir, images)
    np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]), ref["probabilities"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs["classes"]), ref["classes"])
    assert (resp.model_spec.name, resp.model_spec.version.value, resp.model_spec.signature_name) == (
        model, 1, "serving_default")


def test_predict_output_filter_and_float_val_input(served: Served, onnx_model_dir: Path) -> None:
    images = _images(1, seed=3)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits"
    t = req.inputs["images"]
    t.dtype = 1
    for d in images.shape:
        t.tensor_shape.dim.add(size=d)
    t.float_val.extend(images.ravel().tolist())
    req.output_filter.append("classes")
    resp = served.stub.Predict(req, timeout=30)
    assert list(resp.outputs) == ["classes"]
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs["classes"]), _reference(onnx_model_dir, images)["classes"])


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND),
        (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND),
        (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION),
        (lambda r: r.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8), np.int32))),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 3), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros((1,), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_predict_errors(served: Served, mutate: Any, code: grpc.StatusCode) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(1)))
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        served.stub.Predict(req, timeout=30)
    assert err.value.code() == code, err.value.details()


def test_metadata_of_onnx_model_has_a_serving_default(served: Served) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "digits"
    req.metadata_field.append("signature_def")
    resp = served.stub.GetModelMetadata(req, timeout=30)
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)
    sd = sdm.signature_def["serving_default"]
    assert sd.method_name == "tensorflow/serving/predict"
    assert set(sd.inputs) == {"images"} and set(sd.outputs) == {"probabilities", "classes"}
    assert sd.inputs["images"].dtype == 1
    assert resp.model_spec.version.value == 1


def _examples(msg: Any, rows: list[list[float]]) -> None:
    for row in rows:
        msg.input.example_list.examples.add().features.feature["x"].float_list.value.extend(row)


def test_classify_regress_multi_inference_on_a_savedmodel(served: Served) -> None:
    c = classification_pb2.ClassificationRequest()
    c.model_spec.name, c.model_spec.signature_name = "examples", "classify_x"
    _examples(c, [[1.0, 3.0]])
    cres = served.stub.Classify(c, timeout=30).result.classifications[0].classes
    assert [k.label for k in cres] == ["neg", "pos"]
    assert cres[1].score == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3)), rel=1e-5)
    r = regression_pb2.RegressionRequest()
    r.model_spec.name, r.model_spec.signature_name = "examples", "regress_x"
    _examples(r, [[1.0, 3.0], [2.0, -5.0]])
    assert [x.value for x in served.stub.Regress(r, timeout=30).result.regressions] == [4.0, -3.0]
    m = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify_x", "tensorflow/serving/classify"), ("regress_x", "tensorflow/serving/regress")):
        t = m.tasks.add()
        t.model_spec.name, t.model_spec.signature_name, t.method_name = "examples", sig, method
    _examples(m, [[0.5, 0.5]])
    results = served.stub.MultiInference(m, timeout=30).results
    assert results[1].regression_result.regressions[0].value == pytest.approx(1.0)
    assert results[0].model_spec.version.value == 1


def _example_api_error(served: Served, api: str, signature: str = "") -> tuple[grpc.StatusCode, str]:
    if api == "MultiInference":
        req: Any = inference_pb2.MultiInferenceRequest()
        task = req.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = "digits", signature
        task.method_name = "tensorflow/serving/classify"
    else:
        req = (classification_pb2.ClassificationRequest if api == "Classify" else regression_pb2.RegressionRequest)()
        req.model_spec.name, req.model_spec.signature_name = "digits", signature
    _examples(req, [[1.0, 3.0]])
    with pytest.raises(grpc.RpcError) as err:
        getattr(served.stub, api)(req, timeout=30)
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("api", ["Classify", "Regress", "MultiInference"])
def test_example_apis_on_an_onnx_model_are_invalid_argument_with_the_reason(served: Served, api: str) -> None:
    """An ONNX model has only its synthesized predict signature: TF Serving's INVALID_ARGUMENT, with
    the reason (the method name; this check comes first because it is the clearest of the failures
    TF Serving would report for a float-input predict signature)."""
    what, method = ("regression", "regress") if api == "Regress" else ("classification", "classify")
    assert _example_api_error(served, api) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expected {what} signature method_name to be tensorflow/serving/{method}. Was: tensorflow/serving/predict")


@pytest.mark.parametrize(("api", "message"), [
    ("Classify", "No signature was found with the name: nope"),
    ("Regress", "No signature was found with the name: nope"),
    ("MultiInference", "Requested signature not found in model graph: nope"),
])
def test_example_apis_with_an_unknown_signature_use_tf_servings_words(served: Served, api: str, message: str) -> None:
    assert _example_api_error(served, api, "nope") == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_model_status_and_reload(served: Served, onnx_model_dir: Path) -> None:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "digits"
    [mvs] = served.models.GetModelStatus(req, timeout=30).model_version_status
    assert (mvs.version, mvs.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

    reload = model_management_pb2.ReloadConfigRequest()
    c = reload.config.model_config_list.config.add()
    c.name, c.base_path, c.model_platform = "digits2", str(onnx_model_dir), "onnx"
    assert served.models.HandleReloadConfigRequest(reload, timeout=60).status.error_code == 0
    req.model_spec.name = "digits2"
    assert served.models.GetModelStatus(req, timeout=30).model_version_status[0].state == 30
    req.model_spec.name = "digits"  # not in the new config: unloaded
    deadline = time.monotonic() + 10
    while True:
        try:
            states = [s.state for s in served.models.GetModelStatus(req, timeout=30).model_version_status]
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        if all(s == 50 for s in states) or time.monotonic() > deadline:
            assert all(s == 50 for s in states), states
            break
        time.sleep(0.05)

    bad = model_management_pb2.ReloadConfigRequest()
    bad.config.model_config_list.config.add(name="", base_path="/x")
    with pytest.raises(grpc.RpcError) as err:
        served.models.HandleReloadConfigRequest(bad, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_is_serving_when_core_is_ready(served: Served) -> None:
    h = health_pb2_grpc.HealthStub(served.channel)
    assert h.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_predict_requests())
def test_fuzz_predict_against_real_core(served_module: Served, req: predict_pb2.PredictRequest) -> None:
    req.model_spec.name = {"half_plus_two": "digits"}.get(req.model_spec.name, req.model_spec.name)
    if "x" in req.inputs:
        req.inputs["images"].CopyFrom(req.inputs["x"])
    try:
        served_module.stub.Predict(req, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in _ALLOWED, (exc.code(), exc.details())


@pytest.fixture(scope="module", params=["aio", "threaded"])
def served_module(request: pytest.FixtureRequest, loop_thread: Any, onnx_model_dir: Path,
                  saved_model_dir: Path) -> Iterator[Served]:
    from teeserve.serving._config import ServingOptions
    from teeserve.serving._core import ServingCore

    core = ServingCore([ModelConfig("digits", str(onnx_model_dir)), ModelConfig("digits_tf", str(saved_model_dir))],
                       options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
    loop_thread.run(core.start())
    s = Served(loop_thread, core, threaded=request.param == "threaded")
    yield s
    s.close()
    loop_thread.run(core.stop())


def test_server_still_answers_after_fuzzing(served_module: Served) -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(1)))
    assert served_module.stub.Predict(req, timeout=30).model_spec.version.value == 1
