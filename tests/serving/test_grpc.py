"""The gRPC front end over real gRPC on 127.0.0.1, with the official tensorflow-serving-api stubs as the
client (the compatibility oracle) and a small fake core (the front end's only dependency is the
ServingCoreAPI protocol). Integration with the real core: test_grpc_integration.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
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
from tensorflow_serving.config import model_server_config_pb2

from teeserve._proto import pb
from teeserve.serving import Code, ModelRef, PredictResult, ServingError, Signature, TensorSpec, VersionState
from teeserve.serving._grpc import GrpcFrontEnd, encode_output, server_options
from teeserve.serving._metrics import Metrics
from teeserve.serving._types import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD, VersionStatus

DT_FLOAT, DT_INT32 = 1, 3


class FakeCore:
    """half_plus_two (y = 0.5 x + 2) at version 123 (label "stable"), and "slow" (sleeps x seconds).

    Errors use TensorFlow Serving's codes and messages, as the real core must."""

    def __init__(self) -> None:
        xy = {"x": TensorSpec("x:0", DT_FLOAT, (-1,))}, {"y": TensorSpec("y:0", DT_FLOAT, (-1,))}
        self.sigs = {
            "half_plus_two": {
                "serving_default": Signature(PREDICT_METHOD, *xy),
                "classify_x_to_y": Signature(CLASSIFY_METHOD, {"inputs": TensorSpec("tf_example:0", 7, ())},
                                             {"scores": TensorSpec("y:0", DT_FLOAT, (-1, 1))}),
                "regress_x_to_y": Signature(REGRESS_METHOD, {"inputs": TensorSpec("tf_example:0", 7, ())},
                                            {"outputs": TensorSpec("y:0", DT_FLOAT, (-1, 1))}),
            },
            "slow": {"serving_default": Signature(PREDICT_METHOD, *xy)},
        }
        self.reloaded: list[Any] = []
        self.calls = 0
        self.in_flight = 0

    def _resolve(self, ref: ModelRef) -> int:
        if ref.name not in self.sigs:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({ref.name})")
        if ref.label is not None:
            if ref.label != "stable":
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {ref.label}")
            return 123
        if ref.version is not None and ref.version != 123:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Specific({ref.name}, {ref.version})")
        return 123

    def _signature(self, ref: ModelRef, name: str) -> tuple[str, Signature]:
        name = name or "serving_default"
        sig = self.sigs[ref.name].get(name)
        if sig is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return name, sig

    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        self.calls += 1
        version = self._resolve(ref)
        name, sig = self._signature(ref, signature_name)
        if sig.method_name != PREDICT_METHOD:
            raise ServingError(Code.INVALID_ARGUMENT, f"signature {name} is not a predict signature")
        if set(inputs) != set(sig.inputs):
            raise ServingError(Code.INVALID_ARGUMENT, f"input size does not match signature: {len(inputs)}!="
                               f"{len(sig.inputs)}")
        x = inputs["x"]
        if x.dtype != np.float32:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expects arg[0] to be float but {x.dtype} is provided")
        if x.ndim != 1:
            raise ServingError(Code.INVALID_ARGUMENT, f"input x must be a vector, got shape {list(x.shape)}")
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(Code.INVALID_ARGUMENT, f"output tensor alias not found in signature: {alias}")
        if ref.name == "slow":
            self.in_flight += 1
            try:
                await asyncio.sleep(float(x[0]))
            finally:
                self.in_flight -= 1
        y = x * np.float32(0.5) + np.float32(2.0)
        return PredictResult(ref.name, version, name, {"y": y})

    async def classify(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        version = self._resolve(ref)
        name, sig = self._signature(ref, signature_name or "classify_x_to_y")
        if sig.method_name != CLASSIFY_METHOD:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected classification signature method_name to be "
                               f"{CLASSIFY_METHOD}. Was: {sig.method_name}")
        result = pb.ClassificationResult()
        for ex in input_proto.example_list.examples:
            x = ex.features.feature["x"].float_list.value[0]
            result.classifications.add().classes.add(label="y", score=0.5 * x + 2)
        return ref.name, version, result

    async def regress(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        version = self._resolve(ref)
        name, sig = self._signature(ref, signature_name or "regress_x_to_y")
        if sig.method_name != REGRESS_METHOD:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected regression signature method_name to be "
                               f"{REGRESS_METHOD}. Was: {sig.method_name}")
        result = pb.RegressionResult()
        for ex in input_proto.example_list.examples:
            result.regressions.add(value=0.5 * ex.features.feature["x"].float_list.value[0] + 2)
        return ref.name, version, result

    def signatures(self, ref: ModelRef) -> tuple[str, int, Mapping[str, Signature]]:
        return ref.name, self._resolve(ref), self.sigs[ref.name]

    def model_status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        if name not in self.sigs:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        if version not in (None, 123):
            raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
        return [VersionStatus(123, VersionState.AVAILABLE)]

    def is_ready(self) -> bool:
        return True

    async def reload_config(self, config: Any) -> None:
        names = [c.name for c in config.model_config_list.config]
        if any(not n for n in names):
            raise ServingError(Code.INVALID_ARGUMENT, "model config: model name is empty")
        self.reloaded.append(names)


class ServerThread:
    """A grpc.aio server with a GrpcFrontEnd, on its own event loop in a thread, on 127.0.0.1; with
    ``threads``, gRPC's thread-pool server of that many threads instead (what ``teeserve serve`` runs)."""

    def __init__(self, core: Any, *, threads: int = 0, **kwargs: Any) -> None:
        self.core = core
        self.threads = threads
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.metrics = Metrics(process_collector=False)
        self.front: GrpcFrontEnd = self.run(self._make(kwargs))
        self.server: Any
        self.port: int = self.run(self._start())

    async def _make(self, kwargs: dict[str, Any]) -> GrpcFrontEnd:
        return GrpcFrontEnd(self.core, metrics=self.metrics, threaded=bool(self.threads), **kwargs)

    async def _start(self) -> int:
        if self.threads:
            self.server = grpc.server(ThreadPoolExecutor(self.threads), options=server_options())
            self.front.add_to_threaded_server(self.server, asyncio.get_running_loop())
        else:
            self.server = grpc.aio.server(options=server_options())
            self.front.add_to_server(self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.front.init_health()
        if self.threads:
            self.server.start()
        else:
            await self.server.start()
        return port

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.threads:
            self.server.stop(None).wait(10)
        else:
            self.run(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    s = ServerThread(FakeCore(), max_concurrent=8)
    s.run(s.front.set_ready(True))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(served: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def _request(x: Any, *, name: str = "half_plus_two", encoding: str = "make_tensor_proto") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    arr = np.asarray(x, dtype=np.float32)
    if encoding == "make_tensor_proto":
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(arr))
    elif encoding == "float_val":
        t = req.inputs["x"]
        t.dtype = types_pb2.DT_FLOAT
        t.tensor_shape.dim.add(size=arr.size)
        t.float_val.extend(arr.tolist())
    elif encoding == "tensor_content":
        t = req.inputs["x"]
        t.dtype = types_pb2.DT_FLOAT
        t.tensor_shape.dim.add(size=arr.size)
        t.tensor_content = arr.astype("<f4").tobytes()
    else:
        raise AssertionError(encoding)
    return req


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code()  # type: ignore[attr-defined,no-any-return]


# --- Predict -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["make_tensor_proto", "float_val", "tensor_content"])
def test_predict_accepts_every_client_encoding(stub: Any, encoding: str) -> None:
    resp = stub.Predict(_request([1.0, 2.0, 5.0], encoding=encoding), timeout=10)
    y = tf.make_ndarray(resp.outputs["y"])
    np.testing.assert_array_equal(y, np.array([2.5, 3.0, 4.5], dtype=np.float32))
    assert resp.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert resp.model_spec.name == "half_plus_two"
    assert resp.model_spec.version.value == 123
    assert resp.model_spec.signature_name == "serving_default"


def test_outputs_use_typed_fields_by_default_like_tf_serving(stub: Any) -> None:
    # TF Serving's default (--enable_serialization_as_tensor_content=false) is Tensor::AsProtoField:
    # clients that read outputs["y"].float_val directly must keep working.
    out = stub.Predict(_request([1.0, 2.0]), timeout=10).outputs["y"]
    assert list(out.float_val) == [2.5, 3.0]
    assert out.tensor_content == b""
    assert [d.size for d in out.tensor_shape.dim] == [2]


def test_enable_serialization_as_tensor_content() -> None:
    s = ServerThread(FakeCore(), tensor_content=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            out = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(_request([1.0, 2.0]), timeout=10)
        y = out.outputs["y"]
        assert list(y.float_val) == [] and len(y.tensor_content) == 8
        assert tf.make_ndarray(y).tolist() == [2.5, 3.0]
    finally:
        s.stop()


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64",
                                   "uint32", "uint64", "bool", "float16", "complex64", "complex128", "bytes"])
@pytest.mark.parametrize("tensor_content", [False, True])
def test_encode_output_round_trips_through_tf(dtype: str, tensor_content: bool) -> None:
    rng = np.random.default_rng(7)
    if dtype == "bytes":
        arr = np.array([[b"a", b""], [b"\x00\xff", b"xyz"]], dtype=object)
    elif dtype == "bool":
        arr = rng.random((2, 3)) > 0.5
    elif dtype.startswith(("float", "complex")):
        arr = (rng.standard_normal((2, 3)) * 100).astype(dtype)
        if dtype.startswith("complex"):
            arr = arr + 1j * arr[::-1]
    else:
        info = np.iinfo(dtype)
        arr = np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=dtype)
    tp = pb.TensorProto()
    encode_output(tp, arr, tensor_content=tensor_content)
    official = tensor_pb2.TensorProto.FromString(tp.SerializeToString())
    back = tf.make_ndarray(official)
    np.testing.assert_array_equal(back, arr)
    assert back.shape == arr.shape


def test_predict_by_version_and_label_echoes_resolved_version(stub: Any) -> None:
    req = _request([4.0])
    req.model_spec.version.value = 123
    assert stub.Predict(req, timeout=10).model_spec.version.value == 123
    req = _request([4.0])
    req.model_spec.version_label = "stable"
    resp = stub.Predict(req, timeout=10)
    assert resp.model_spec.version.value == 123
    assert tf.make_ndarray(resp.outputs["y"]).tolist() == [4.0]


def test_predict_output_filter_reaches_core_and_bad_alias_is_invalid(stub: Any) -> None:
    req = _request([0.0])
    req.output_filter.append("y")
    assert list(stub.Predict(req, timeout=10).outputs) == ["y"]
    req.output_filter[:] = ["nope"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(req, timeout=10)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in err.value.details()


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        (lambda r: setattr(r.model_spec, "name", ""), grpc.StatusCode.INVALID_ARGUMENT,
         "ModelSpec has no name specified."),
        (lambda r: r.ClearField("model_spec"), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (lambda r: r.model_spec.version.__setattr__("value", 7), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(half_plus_two, 7)"),
        (lambda r: setattr(r.model_spec, "version_label", "canary"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: canary"),
        (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1], dtype=np.int32))),
         grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float"),
        (lambda r: r.inputs["x"].tensor_shape.dim.add(size=-3), grpc.StatusCode.INVALID_ARGUMENT,
         "tensor parsing error: x"),
    ],
)
def test_predict_errors_keep_code_and_message(stub: Any, mutate: Any, code: grpc.StatusCode, message: str) -> None:
    req = _request([1.0])
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(req, timeout=10)
    assert _code(err.value) == code
    assert message in err.value.details()


def test_malformed_protobuf_is_invalid_argument(channel: grpc.Channel) -> None:
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)  # a length prefix far beyond the message
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not parse the request as a tensorflow.serving.PredictRequest" in err.value.details()


def test_a_bug_in_the_core_is_internal_without_details(served: ServerThread, stub: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    core = served.core
    original = core.predict

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("secret-internal-detail")

    core.predict = broken
    try:
        with caplog.at_level("ERROR", logger="teeserve.serving.grpc"):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(_request([1.0]), timeout=10)
    finally:
        core.predict = original
    assert _code(err.value) == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in err.value.details()
    assert "Traceback" not in err.value.details()
    assert any("secret-internal-detail" in (r.exc_text or "") for r in caplog.records)


def test_large_messages_are_accepted(served: ServerThread) -> None:
    # gRPC's default receive limit is 4 MiB; TF Serving (and teeserve) accept up to INT32_MAX.
    x = np.arange(2_000_000, dtype=np.float32)  # 8 MB in, 8 MB out
    opts = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=opts) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
            _request(x, encoding="tensor_content"), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(resp.outputs["y"]), x * 0.5 + 2)


def test_concurrent_requests_wait_for_a_slot_instead_of_failing(served: ServerThread, stub: Any) -> None:
    # max_concurrent=8 (--grpc_max_threads): 12 slow calls at once all succeed, at most 8 in the core.
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, served.core.in_flight)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    futures = [stub.Predict.future(_request([0.3], name="slow"), timeout=30) for _ in range(12)]
    results = [f.result() for f in futures]
    stop.set()
    watcher.join()
    assert all(r.model_spec.name == "slow" for r in results)
    assert 1 <= peak <= 8


# --- GetModelMetadata ----------------------------------------------------------------------------


def test_get_model_metadata_packs_signature_def_map(stub: Any) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2 as gmm

    req = gmm.GetModelMetadataRequest()
    req.model_spec.name = "half_plus_two"
    req.metadata_field.append("signature_def")
    resp = stub.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.name == "half_plus_two" and resp.model_spec.version.value == 123
    sdm = gmm.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sdm)
    assert set(sdm.signature_def) == {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    sd = sdm.signature_def["serving_default"]
    assert sd.method_name == "tensorflow/serving/predict"
    assert sd.inputs["x"].name == "x:0" and sd.inputs["x"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in sd.inputs["x"].tensor_shape.dim] == [-1]
    assert sd.outputs["y"].name == "y:0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [(["signature_def", "nope"], "Metadata field nope is not supported"),
     ([], "GetModelMetadataRequest must specify at least one metadata_field")],
)
def test_get_model_metadata_only_signature_def(stub: Any, fields: list[str], message: str) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "half_plus_two"
    req.metadata_field.extend(fields)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(req, timeout=10)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message


# --- Classify / Regress / MultiInference ---------------------------------------------------------


def _examples(msg: Any, xs: list[float]) -> None:
    for x in xs:
        msg.input.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def test_classify_and_regress_delegate_to_core(stub: Any) -> None:
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "half_plus_two"
    creq.model_spec.signature_name = "classify_x_to_y"
    _examples(creq, [2.0, 4.0])
    cresp = stub.Classify(creq, timeout=10)
    assert [c.classes[0].score for c in cresp.result.classifications] == [3.0, 4.0]
    assert cresp.model_spec.version.value == 123 and cresp.model_spec.signature_name == "classify_x_to_y"
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = "half_plus_two"
    rreq.model_spec.signature_name = "regress_x_to_y"
    _examples(rreq, [6.0])
    rresp = stub.Regress(rreq, timeout=10)
    assert [r.value for r in rresp.result.regressions] == [5.0]


def test_classify_on_predict_signature_gets_the_core_status(stub: Any) -> None:
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = "half_plus_two"
    creq.model_spec.signature_name = "serving_default"
    _examples(creq, [1.0])
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(creq, timeout=10)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name" in err.value.details()


def test_multi_inference(stub: Any) -> None:
    req = inference_pb2.MultiInferenceRequest()
    t1 = req.tasks.add()
    t1.model_spec.name, t1.model_spec.signature_name, t1.method_name = (
        "half_plus_two", "classify_x_to_y", "tensorflow/serving/classify")
    t2 = req.tasks.add()
    t2.model_spec.name, t2.model_spec.signature_name, t2.method_name = (
        "half_plus_two", "regress_x_to_y", "tensorflow/serving/regress")
    _examples(req, [2.0])
    resp = stub.MultiInference(req, timeout=10)
    assert resp.results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert resp.results[1].regression_result.regressions[0].value == 3.0
    assert resp.results[1].model_spec.signature_name == "regress_x_to_y"


@pytest.mark.parametrize(
    ("tasks", "code", "message"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "MultiInferenceRequest must specify at least one task."),
        ([("half_plus_two", "a", "tensorflow/serving/classify"), ("other", "b", "tensorflow/serving/regress")],
         grpc.StatusCode.INVALID_ARGUMENT, "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
        ([("half_plus_two", "a", "tensorflow/serving/classify"), ("half_plus_two", "a", "tensorflow/serving/regress")],
         grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: a"),
        ([("half_plus_two", "serving_default", "tensorflow/serving/predict")],
         grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
    ],
)
def test_multi_inference_checks(stub: Any, tasks: list[tuple[str, str, str]], code: grpc.StatusCode,
                                message: str) -> None:
    req = inference_pb2.MultiInferenceRequest()
    for name, sig, method in tasks:
        t = req.tasks.add()
        t.model_spec.name, t.model_spec.signature_name, t.method_name = name, sig, method
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(req, timeout=10)
    assert _code(err.value) == code
    assert err.value.details() == message


# --- ModelService ---------------------------------------------------------------------------------


def test_get_model_status(model_stub: Any) -> None:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "half_plus_two"
    resp = model_stub.GetModelStatus(req, timeout=10)
    [mvs] = resp.model_version_status
    assert mvs.version == 123
    assert mvs.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert mvs.status.error_code == 0
    req.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        model_stub.GetModelStatus(req, timeout=10)
    assert _code(err.value) == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "Could not find any versions of model nope"


def test_handle_reload_config_request_reaches_core(served: ServerThread, model_stub: Any) -> None:
    req = model_management_pb2.ReloadConfigRequest()
    c = req.config.model_config_list.config.add()
    c.name, c.base_path, c.model_platform = "m2", "/models/m2", "tensorflow"
    resp = model_stub.HandleReloadConfigRequest(req, timeout=10)
    assert resp.status.error_code == 0
    assert served.core.reloaded[-1] == ["m2"]
    bad = model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig())
    bad.config.model_config_list.config.add(base_path="/x")
    with pytest.raises(grpc.RpcError) as err:
        model_stub.HandleReloadConfigRequest(bad, timeout=10)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT


# --- health ---------------------------------------------------------------------------------------


def test_health_follows_readiness_and_drain() -> None:
    s = ServerThread(FakeCore())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

            names = ["", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
                     "PredictionService", "ModelService"]
            assert [status(n) for n in names] == [health_pb2.HealthCheckResponse.NOT_SERVING] * 5
            assert status("liveness") == health_pb2.HealthCheckResponse.SERVING
            s.run(s.front.set_ready(True))
            assert [status(n) for n in names] == [health_pb2.HealthCheckResponse.SERVING] * 5
            assert status("liveness") == health_pb2.HealthCheckResponse.SERVING
            s.run(s.front.enter_drain())
            assert [status(n) for n in names] == [health_pb2.HealthCheckResponse.NOT_SERVING] * 5
            s.run(s.front.set_ready(True))  # readiness cannot come back while draining
            assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                status("no.such.Service")
            assert _code(err.value) == grpc.StatusCode.NOT_FOUND
    finally:
        s.stop()


def test_metrics_record_grpc_requests(served: ServerThread, stub: Any) -> None:
    stub.Predict(_request([1.0]), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Predict(_request([1.0], name="unknown-model-xyz"), timeout=10)
    text = served.metrics.render()[0].decode()
    assert 'teeserve_requests_total{api="Predict",code="OK",model_name="half_plus_two",protocol="GRPC"}' in text
    assert 'model_name="<unknown>"' in text
    assert "unknown-model-xyz" not in text  # names from the network never become labels


# --- fuzz -----------------------------------------------------------------------------------------

_ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION}

_dtypes = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 17, 18, 19, 20, 21, 22, 23, 99])
_dims = st.lists(st.integers(min_value=-2, max_value=6), max_size=4)


@st.composite
def _tensor(draw: Any) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto()
    t.dtype = draw(_dtypes)
    for d in draw(_dims):
        t.tensor_shape.dim.add(size=d)
    if draw(st.booleans()):
        t.tensor_shape.unknown_rank = True
    which = draw(st.sampled_from(["content", "float", "int", "string", "int64", "bool", "none", "half", "dcomplex"]))
    if which == "content":
        t.tensor_content = draw(st.binary(max_size=64))
    elif which == "float":
        t.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    elif which == "int":
        t.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=8)))
    elif which == "string":
        t.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    elif which == "int64":
        t.int64_val.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)))
    elif which == "bool":
        t.bool_val.extend(draw(st.lists(st.booleans(), max_size=8)))
    elif which == "half":
        t.half_val.extend(draw(st.lists(st.integers(0, 2**31 - 1), max_size=8)))
    elif which == "dcomplex":
        t.dcomplex_val.extend(draw(st.lists(st.floats(), max_size=5)))
    return t


@st.composite
def _predict_requests(draw: Any) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = draw(st.sampled_from(["half_plus_two", "", "nope", "half_plus_two\x00", "ü"]))
    choice = draw(st.sampled_from(["none", "version", "label"]))
    if choice == "version":
        req.model_spec.version.value = draw(st.sampled_from([123, 0, -1, 2**63 - 1]))
    elif choice == "label":
        req.model_spec.version_label = draw(st.sampled_from(["stable", "", "x" * 300]))
    req.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "classify_x_to_y", "zz"]))
    for alias in draw(st.lists(st.sampled_from(["x", "y", "", "x\x00"]), max_size=3, unique=True)):
        req.inputs[alias].CopyFrom(draw(_tensor()))
    req.output_filter.extend(draw(st.lists(st.sampled_from(["y", "x", ""]), max_size=3)))
    return req


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_predict_requests())
def test_fuzz_predict_never_internal(stub: Any, req: predict_pb2.PredictRequest) -> None:
    try:
        stub.Predict(req, timeout=10)
    except grpc.RpcError as exc:
        assert _code(exc) in _ALLOWED, (_code(exc), exc.details())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_fuzz_raw_bytes_never_internal(channel: grpc.Channel, data: bytes) -> None:
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    try:
        raw(data, timeout=10)
    except grpc.RpcError as exc:
        assert _code(exc) in _ALLOWED, (_code(exc), exc.details())


def test_server_still_up_after_fuzzing(stub: Any) -> None:
    assert stub.Predict(_request([2.0]), timeout=10).model_spec.version.value == 123


# --- threaded server: a slow bridged call gives its thread back when the client gives up -----------


class _WaitingReloadCore(FakeCore):
    """A reload that waits (for slow model loads, or for a --workers peer that is still starting)
    until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.finished: list[list[str]] = []

    async def reload_config(self, config: Any) -> None:
        await self.release.wait()
        self.finished.append([c.name for c in config.model_config_list.config])


def _reload_past_the_deadline(models: Any, name: str) -> Any:
    """A reload whose client gives up after 0.5 s (the core's reload waits meanwhile); returns the request."""
    req = model_management_pb2.ReloadConfigRequest()
    req.config.model_config_list.config.add(name=name, base_path=f"/models/{name}", model_platform="tensorflow")
    with pytest.raises(grpc.RpcError) as err:
        models.HandleReloadConfigRequest(req, timeout=0.5)
    assert _code(err.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    return req


def test_threaded_server_frees_its_thread_when_a_waiting_call_is_cancelled() -> None:
    """With a single gRPC worker thread, a reload waiting past the client's deadline used to hold
    that thread for good: every later call hung. Now the thread stops waiting when the RPC ends,
    the next calls are served, and the reload still completes on the loop."""
    core = _WaitingReloadCore()
    served = ServerThread(core, threads=1)
    served.run(served.front.set_ready(True))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            models = model_service_pb2_grpc.ModelServiceStub(ch)
            req = _reload_past_the_deadline(models, "m3")
            # The only worker thread is free again: a second reload and a status call are served
            # (each would wait for a thread, and time out, if the first call still held it).
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = "half_plus_two"
            assert models.GetModelStatus(status, timeout=5).model_version_status[0].version == 123
            fut = models.HandleReloadConfigRequest.future(req, timeout=10)
            time.sleep(0.2)
            served.loop.call_soon_threadsafe(core.release.set)
            assert fut.result().status.error_code == 0
            # The reload the first client gave up on was not cut off: both completed.
            assert core.finished == [["m3"], ["m3"]]
    finally:
        served.stop()


def test_aio_reload_runs_to_its_end_when_the_client_gives_up() -> None:
    """The same on grpc.aio: a reload cut off at the client's deadline would leave the server in
    neither the old config nor the new one; it completes, and later calls are served."""
    core = _WaitingReloadCore()
    served = ServerThread(core)
    served.run(served.front.set_ready(True))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            models = model_service_pb2_grpc.ModelServiceStub(ch)
            _reload_past_the_deadline(models, "m4")
            served.loop.call_soon_threadsafe(core.release.set)
            deadline = time.monotonic() + 10
            while not core.finished and time.monotonic() < deadline:
                time.sleep(0.05)
            assert core.finished == [["m4"]]
            assert not served.front._reloads  # nothing left behind
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = "half_plus_two"
            assert models.GetModelStatus(status, timeout=5).model_version_status[0].version == 123
    finally:
        served.stop()


class _WaitingPredictCore(FakeCore):
    """A Predict that runs until the test releases it (a slow model)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = threading.Event()

    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        self.started.set()
        await self.release.wait()
        return await super().predict(ref, signature_name, inputs, output_filter)


def test_threaded_server_answers_health_checks_while_every_thread_runs_a_model() -> None:
    """Liveness and readiness must not depend on a model being idle: with the single gRPC worker
    thread held by a slow Predict (and another Predict waiting for it), Health.Check still answers
    at once, for liveness and for readiness; before, it waited behind them and timed out."""
    core = _WaitingPredictCore()
    served = ServerThread(core, threads=1)
    served.run(served.front.set_ready(True))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            running = [stub.Predict.future(_request([1.0]), timeout=30) for _ in range(2)]
            assert core.started.wait(10)
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("liveness", "", "tensorflow.serving.PredictionService"):
                for _ in range(3):
                    reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
            assert not any(f.done() for f in running)  # the model calls were indeed still running
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
            served.loop.call_soon_threadsafe(core.release.set)
            for f in running:
                assert list(f.result().outputs) == ["y"]
    finally:
        served.stop()
