"""A small fake serving core for the REST tests (the front end depends only on ``ServingCoreAPI``).

The fake follows the core's contract closely enough to exercise every REST path: TF Serving's
NOT_FOUND / INVALID_ARGUMENT messages for unknown models, versions and labels, a predict that checks
dtypes, classify/regress results as protos, readiness that can be flipped, a slow model (timeouts)
and a broken one (internal errors). Other test modules import it by file name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from teeserve._proto import pb
from teeserve.serving import Code, ModelRef, PredictResult, ServingError, Signature, TensorSpec, VersionState, VersionStatus
from teeserve.serving._types import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD

DT_FLOAT, DT_DOUBLE, DT_INT32, DT_STRING, DT_INT64, DT_BOOL = 1, 2, 3, 7, 9, 10

_NP = {DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_INT64: np.int64, DT_BOOL: np.bool_}


def _spec(name: str, dtype: int, *shape: int) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


HALF_SIGS = {
    "serving_default": Signature(PREDICT_METHOD, {"x": _spec("x:0", DT_FLOAT, -1)}, {"y": _spec("y:0", DT_FLOAT, -1)}),
    "multi": Signature(
        PREDICT_METHOD,
        {"a": _spec("a:0", DT_FLOAT, -1, 2), "b": _spec("b:0", DT_STRING, -1)},
        {"sum": _spec("sum:0", DT_FLOAT, -1), "b_bytes": _spec("bb:0", DT_STRING, -1), "n": _spec("n:0", DT_INT64, -1)},
    ),
    "types": Signature(
        PREDICT_METHOD,
        {"i": _spec("i:0", DT_INT32, -1), "flag": _spec("f:0", DT_BOOL, -1), "d": _spec("d:0", DT_DOUBLE, -1)},
        {"i": _spec("io:0", DT_INT32, -1), "flag": _spec("fo:0", DT_BOOL, -1), "d": _spec("do:0", DT_DOUBLE, -1)},
    ),
    "strings": Signature(PREDICT_METHOD, {"s": _spec("s:0", DT_STRING, -1)}, {"s_bytes": _spec("o:0", DT_STRING, -1)}),
    "classify_x": Signature(CLASSIFY_METHOD, {"inputs": _spec("ex:0", DT_STRING, -1)}, {"scores": _spec("sc:0", DT_FLOAT, -1, 2)}),
    "regress_x": Signature(REGRESS_METHOD, {"inputs": _spec("ex:0", DT_STRING, -1)}, {"outputs": _spec("o:0", DT_FLOAT, -1)}),
}

rng = np.random.default_rng(0)
DIGITS_W = rng.standard_normal((64, 10)).astype(np.float32)
DIGITS_SIGS = {
    "serving_default": Signature(PREDICT_METHOD, {"x": _spec("x:0", DT_FLOAT, -1, 64)}, {"probs": _spec("p:0", DT_FLOAT, -1, 10)})
}


class FakeCore:
    """Models: ``half`` (versions 1, 2; labels stable=1, canary=2), ``digits`` (64 -> 10 softmax),
    ``slow`` (predict sleeps ``slow_seconds``), ``broken`` (predict raises a bug)."""

    def __init__(self) -> None:
        self.ready = True
        self.slow_seconds = 5.0
        self.calls: list[tuple[str, ModelRef, str]] = []
        self.models: dict[str, dict[int, Mapping[str, Signature]]] = {
            "half": {1: HALF_SIGS, 2: HALF_SIGS},
            "digits": {1: DIGITS_SIGS},
            "slow": {1: {"serving_default": HALF_SIGS["serving_default"]}},
            "broken": {1: {"serving_default": HALF_SIGS["serving_default"]}},
        }
        self.labels = {"half": {"stable": 1, "canary": 2}}
        self.status_extra: dict[str, list[VersionStatus]] = {
            "half": [VersionStatus(3, VersionState.END, Code.DATA_LOSS, "wrong wrap key for version 3")]
        }

    # --- resolution with TF Serving's messages ---
    def _resolve(self, ref: ModelRef) -> int:
        versions = self.models.get(ref.name)
        if ref.label is not None:
            if versions is None or ref.label not in self.labels.get(ref.name, {}):
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {ref.label}")
            return self.labels[ref.name][ref.label]
        if ref.version is not None:
            if versions is None or ref.version not in versions:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Specific({ref.name}, {ref.version})")
            return ref.version
        if versions is None:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({ref.name})")
        return max(versions)

    def _signature(self, ref: ModelRef, signature_name: str) -> tuple[int, Signature]:
        version = self._resolve(ref)
        key = signature_name or "serving_default"
        sig = self.models[ref.name][version].get(key)
        if sig is None:
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return version, sig

    # --- ServingCoreAPI ---
    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        self.calls.append(("predict", ref, signature_name))
        version, sig = self._signature(ref, signature_name)
        for alias, spec in sig.inputs.items():
            arr = inputs[alias]
            if spec.dtype == DT_STRING:
                assert arr.dtype == object and all(isinstance(v, bytes) for v in arr.reshape(-1)), arr
            else:
                assert arr.dtype == _NP[spec.dtype], (alias, arr.dtype)
        key = signature_name or "serving_default"
        if ref.name == "slow":
            await asyncio.sleep(self.slow_seconds)
        if ref.name == "broken":
            raise RuntimeError("secret internal detail")
        if ref.name == "digits":
            x = inputs["x"]
            if x.ndim != 2 or x.shape[1] != 64:
                raise ServingError(Code.INVALID_ARGUMENT, f"Expected input shape [-1,64], got {list(x.shape)}")
            logits = x @ DIGITS_W
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            outputs = {"probs": (e / e.sum(axis=1, keepdims=True)).astype(np.float32)}
        elif key == "serving_default":
            outputs = {"y": (inputs["x"] * np.float32(0.5) + np.float32(2 + (version - 1))).astype(np.float32)}
        elif key == "multi":
            b = inputs["b"]
            outputs = {"sum": inputs["a"].sum(axis=-1).astype(np.float32), "b_bytes": b,
                       "n": np.array([len(v) for v in b.reshape(-1)], dtype=np.int64).reshape(b.shape)}
        elif key == "types":
            outputs = {"i": inputs["i"], "flag": inputs["flag"], "d": inputs["d"]}
        elif key == "strings":
            outputs = {"s_bytes": inputs["s"]}
        else:
            raise ServingError(Code.INVALID_ARGUMENT, f"signature {key} is not a predict signature")
        return PredictResult(ref.name, version, key, outputs)

    async def classify(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        self.calls.append(("classify", ref, signature_name))
        self.last_input = input_proto
        version = self._resolve(ref)
        examples = _examples(input_proto)
        result = pb.ClassificationResult()
        for ex in examples:
            c = result.classifications.add()
            c.classes.add(label="features", score=float(len(ex.features.feature)))
            c.classes.add(label="tenth", score=0.1)
        return ref.name, version, result

    async def regress(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        self.calls.append(("regress", ref, signature_name))
        self.last_input = input_proto
        version = self._resolve(ref)
        result = pb.RegressionResult()
        for ex in _examples(input_proto):
            result.regressions.add(value=float(len(ex.features.feature)) + 0.2)
        return ref.name, version, result

    def signatures(self, ref: ModelRef) -> tuple[str, int, Mapping[str, Signature]]:
        version = self._resolve(ref)
        return ref.name, version, self.models[ref.name][version]

    def model_status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        versions = self.models.get(name)
        if versions is None:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        if label is not None:
            version = self._resolve(ModelRef(name, label=label))
        statuses = [VersionStatus(v, VersionState.AVAILABLE) for v in sorted(versions)] + self.status_extra.get(name, [])
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
        return statuses

    def is_ready(self) -> bool:
        return self.ready


def _examples(input_proto: Any) -> list[Any]:
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return list(input_proto.example_list.examples)
    if kind == "example_list_with_context":
        return list(input_proto.example_list_with_context.examples)
    raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")


# The fake itself must behave like the core's contract, or the REST tests prove nothing.


def test_fake_resolution_messages() -> None:
    core = FakeCore()
    with pytest.raises(ServingError, match=r"Latest\(nope\)") as e:
        core.signatures(ModelRef("nope"))
    assert e.value.code == Code.NOT_FOUND
    with pytest.raises(ServingError, match="Unrecognized servable version label: x"):
        core.signatures(ModelRef("half", label="x"))
    assert core.signatures(ModelRef("half", label="canary"))[1] == 2


def test_fake_predict_checks_dtypes() -> None:
    core = FakeCore()
    with pytest.raises(AssertionError):
        asyncio.run(core.predict(ModelRef("half"), "", {"x": np.zeros(2, dtype=np.float64)}))


#: The event loop a ServerThread runs: the server's default (uvloop); test_rest_server runs on both.
EVENT_LOOP = {"kind": "uvloop"}


class ServerThread:
    """A REST server over ``core`` on 127.0.0.1, port 0, running its own event loop in a thread
    (the tests themselves are synchronous and talk raw HTTP to it)."""

    def __init__(self, core: Any, **kwargs: Any) -> None:
        import threading

        from teeserve.serving._metrics import Metrics
        from teeserve.serving.rest import start_rest_server

        self.core = core
        kwargs.setdefault("metrics", Metrics(process_collector=False))
        self.metrics = kwargs["metrics"]
        if EVENT_LOOP["kind"] == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None

        async def start() -> None:
            self.server = await start_rest_server(core, "127.0.0.1", 0, **kwargs)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(start())
            except BaseException as exc:  # surfaced in __init__
                self._error = exc
                self._started.set()
                return
            self._started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="rest-test-server", daemon=True)
        self.thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        self.port = self.server.port
        self.handler = self.server.handler

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 2.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.close(grace=grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def http(port: int, method: str, path: str, body: bytes | str | None = None, *, headers: dict[str, str] | None = None,
         conn: Any = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request over ``conn`` (a kept-alive ``http.client.HTTPConnection``) or a fresh connection."""
    import http.client

    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        if own:
            conn.close()


def test_server_thread_starts_and_stops() -> None:
    with ServerThread(FakeCore()) as srv:
        status, headers, body = http(srv.port, "GET", "/v1/health/live")
        assert status == 200 and headers["content-type"] == "application/json"
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
