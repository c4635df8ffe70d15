"""The gRPC front end: TensorFlow Serving's PredictionService and ModelService, and grpc.health.v1.

Strategy: a thin shell over :class:`~teeserve.serving._api.ServingCoreAPI`. Each handler parses the
request bytes with the vendored protos (``teeserve._proto``, wire-identical to the official stubs),
turns them into domain types (``ModelRef`` + numpy arrays), awaits the core, and writes the response.
The services are registered as generic handlers, either on a ``grpc.aio`` server (the front end, the
core, whose inference runs in worker threads, and the REST server share one event loop) or, as
``teeserve serve`` does, on gRPC's synchronous thread-pool server (``threaded=True``): there Predict
runs in gRPC's worker thread through the core's thread-safe ``predict_blocking`` (no hand-off to the
loop and to the inference pool, which for a small model cost more than the model) and every other
call is handed to the event loop and handled exactly as on the aio server.

Requests arrive as raw bytes and are parsed here rather than by gRPC's deserializer, so that a
malformed protobuf is INVALID_ARGUMENT (as in TensorFlow Serving) and not gRPC's own INTERNAL
"Exception deserializing request". Errors map in one place (:meth:`GrpcFrontEnd._call`):

- :class:`ServingError` → its code and message;
- a protobuf that does not parse → INVALID_ARGUMENT;
- anything else is a bug → INTERNAL "internal error" to the client, the traceback to the log only.

Health (grpc.health.v1): the services ``""``, ``tensorflow.serving.PredictionService`` and
``tensorflow.serving.ModelService`` (and TF Serving's short names ``PredictionService`` and
``ModelService``) are SERVING only while the server is ready (keys in, every
configured model has an available version) and NOT_SERVING before and while draining: that is the
readiness signal. The service ``liveness`` is SERVING from start until shutdown, whatever the models
are doing: that is the liveness signal.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from .._proto import message_class, pb
from ._metrics import METRICS, UNKNOWN_MODEL, Metrics
from ._tensors import DT, ndarray_to_tensor_proto, tensor_proto_to_ndarray, tf_dtype
from ._types import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    Code,
    ModelRef,
    ServingError,
    Signature,
    TensorSpec,
)

__all__ = [
    "GrpcFrontEnd",
    "encode_output",
    "HEALTH_SERVICES",
    "LIVENESS_SERVICE",
    "MAX_MESSAGE_LENGTH",
    "STATUS_CODES",
    "server_options",
]

log = logging.getLogger("teeserve.serving.grpc")

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
#: Health-service names that report readiness ("" is the whole server). The short names are the ones
#: TensorFlow Serving's --enable_grpc_healthcheck_service marks (tf-serving-api.md §1.2), for its probes.
HEALTH_SERVICES: tuple[str, ...] = ("", PREDICTION_SERVICE, MODEL_SERVICE, "PredictionService", "ModelService")
#: Health-service name that reports liveness only.
LIVENESS_SERVICE = "liveness"

#: TensorFlow Serving's ``SetMaxMessageSize(INT32_MAX)``.
MAX_MESSAGE_LENGTH = 2**31 - 1

#: Canonical code → grpc.StatusCode (the numbers are the same; this is the one mapping table).
STATUS_CODES: dict[Code, grpc.StatusCode] = {
    Code(sc.value[0]): sc for sc in grpc.StatusCode  # type: ignore[misc]
}

_INTERNAL_MESSAGE = "internal error (the server log has the details)"
_SIGNATURE_DEF_MAP = "tensorflow.serving.SignatureDefMap"
_TYPE_URL_PREFIX = "type.googleapis.com/"


def server_options(extra: tuple[tuple[str, Any], ...] = (), *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """gRPC server arguments: TF Serving's message-size limits, then ``--grpc_channel_arguments``.

    ``reuse_port``: share the port with the other ``--workers`` (SO_REUSEPORT, the kernel spreads the
    connections); otherwise one listener per port, so another process cannot share it by accident.
    """
    opts: dict[str, Any] = {
        "grpc.max_receive_message_length": MAX_MESSAGE_LENGTH,
        "grpc.max_send_message_length": MAX_MESSAGE_LENGTH,
        "grpc.so_reuseport": 1 if reuse_port else 0,
    }
    opts.update(dict(extra))
    return list(opts.items())


def _request_ref(request: Any) -> ModelRef:
    """The ModelRef of a Predict/Classify/Regress request: one without a model_spec at all is TF
    Serving's ``Missing ModelSpec``; one with an empty name, ``ModelSpec has no name specified.``"""
    if not request.HasField("model_spec"):
        raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
    return _model_ref(request.model_spec)


def _model_ref(spec: Any) -> ModelRef:
    """ModelSpec → ModelRef (version and label are a oneof; an empty name is TF's INVALID_ARGUMENT)."""
    if not spec.name:
        raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return ModelRef(spec.name, version=int(spec.version.value))
    if which == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def _set_spec(spec: Any, name: str, version: int, signature_name: str | None) -> None:
    spec.name = name
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name


def _tensor_info(info: Any, ts: TensorSpec) -> None:
    info.name = ts.name
    info.dtype = ts.dtype
    if ts.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        for d in ts.shape:
            info.tensor_shape.dim.add(size=int(d))


def signature_def_map(signatures: Mapping[str, Signature]) -> Any:
    """Domain signatures → ``tensorflow.serving.SignatureDefMap`` (what GetModelMetadata packs)."""
    sdm = pb.SignatureDefMap()
    for key, sig in signatures.items():
        sd = sdm.signature_def[key]
        sd.method_name = sig.method_name
        for alias, ts in sig.inputs.items():
            _tensor_info(sd.inputs[alias], ts)
        for alias, ts in sig.outputs.items():
            _tensor_info(sd.outputs[alias], ts)
    return sdm


# Which typed field TensorFlow's Tensor::AsProtoField fills for each dtype (tensor.proto).
_TYPED_FIELD = {
    DT.FLOAT: "float_val", DT.DOUBLE: "double_val", DT.INT32: "int_val", DT.UINT8: "int_val",
    DT.INT16: "int_val", DT.INT8: "int_val", DT.UINT16: "int_val", DT.INT64: "int64_val",
    DT.BOOL: "bool_val", DT.UINT32: "uint32_val", DT.UINT64: "uint64_val",
}


def encode_output(out: Any, array: Any, *, tensor_content: bool) -> None:
    """Fill the response TensorProto ``out`` from ``array`` as TensorFlow Serving does.

    TF Serving's default (``--enable_serialization_as_tensor_content=false``) is ``AsProtoField``: the
    values in the typed ``*_val`` field, which clients that read ``outputs[...].float_val`` rely on;
    with the flag, ``AsProtoTensorContent``: raw bytes in ``tensor_content`` (faster for big outputs).
    Strings always go in ``string_val``. Both decode the same with ``tf.make_ndarray``.
    """
    import numpy as np

    a = np.asarray(array)
    dt = tf_dtype(a.dtype)
    field = _TYPED_FIELD.get(dt)
    if tensor_content or field is None:  # strings, half and complex: the shared encoder
        out.CopyFrom(ndarray_to_tensor_proto(a))
        return
    out.dtype = dt
    dims = out.tensor_shape.dim
    for d in a.shape:
        dims.add(size=int(d))
    getattr(out, field).extend(a.ravel().tolist())


Handler = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


class GrpcFrontEnd:
    """TensorFlow Serving's gRPC services over a serving core.

    ``reload_config``: what ``HandleReloadConfigRequest`` calls with the ``ModelServerConfig``
    (default: ``core.reload_config``, sync or async). ``max_concurrent``: ``--grpc_max_threads``, the
    most inference calls in progress at once (more wait in line, as on TensorFlow Serving's thread
    pool). ``tensor_content``: ``--enable_serialization_as_tensor_content`` (see :func:`encode_output`).
    Health starts NOT_SERVING; :meth:`set_ready` and :meth:`enter_drain` change it.

    ``threaded``: serve on gRPC's synchronous thread-pool server (:meth:`add_to_threaded_server`)
    instead of ``grpc.aio`` (:meth:`add_to_server`). There, Predict runs in the gRPC worker thread
    through the core's ``predict_blocking`` (when the core offers it and batching is off): no hop to
    the event loop nor to the inference pool, about a third less server CPU per small request. Every
    other call is handed to the event loop and runs exactly as on the aio server.
    """

    def __init__(
        self,
        core: Any,
        *,
        reload_config: Callable[[Any], Any] | None = None,
        max_concurrent: int | None = None,
        tensor_content: bool = False,
        metrics: Metrics | None = METRICS,
        threaded: bool = False,
    ) -> None:
        from grpc_health.v1 import health

        self.core = core
        self._reload = reload_config if reload_config is not None else getattr(core, "reload_config", None)
        self._limit = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._metrics = metrics
        self._tensor_content = tensor_content
        self._known_models: set[str] = set()
        self._threaded = threaded
        # The threaded (sync) gRPC server needs the synchronous servicer; its set() is not awaitable.
        self.health = health.HealthServicer() if threaded else health.aio.HealthServicer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Future[Any]] = set()  # running reloads (strong references)
        self._ready = False
        self._draining = False

    # --- registration --------------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        from grpc_health.v1 import health_pb2_grpc

        methods = self._methods()
        from .._proto import SERVICES

        handlers = []
        for service, table in methods.items():
            if set(table) != set(SERVICES[service]):  # the vendored protos and this table must agree
                raise RuntimeError(f"{service}: handlers {sorted(table)} != methods {sorted(SERVICES[service])}")
            rpc = {
                method: grpc.unary_unary_rpc_method_handler(
                    self._wrap(service, method, SERVICES[service][method][0], fn),
                    request_deserializer=None,  # raw bytes: parsed in _wrap (malformed → INVALID_ARGUMENT)
                    response_serializer=_serialize,
                )
                for method, fn in table.items()
            }
            handlers.append(grpc.method_handlers_generic_handler(service, rpc))
        server.add_generic_rpc_handlers(tuple(handlers))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)

    def _methods(self) -> dict[str, dict[str, Handler]]:
        return {
            PREDICTION_SERVICE: {
                "Predict": self.predict,
                "GetModelMetadata": self.get_model_metadata,
                "Classify": self.classify,
                "Regress": self.regress,
                "MultiInference": self.multi_inference,
            },
            MODEL_SERVICE: {
                "GetModelStatus": self.get_model_status,
                "HandleReloadConfigRequest": self.handle_reload_config_request,
            },
        }

    def add_to_threaded_server(self, server: grpc.Server, loop: asyncio.AbstractEventLoop) -> None:
        """Register on gRPC's synchronous server; ``loop`` runs the core (and every non-fast call).
        Health checks run on two threads of their own (see :meth:`_threaded_health_handler`)."""
        from .._proto import SERVICES

        if not self._threaded:
            raise RuntimeError("add_to_threaded_server needs GrpcFrontEnd(..., threaded=True)")
        self._loop = loop
        handlers = []
        for service, table in self._methods().items():
            if set(table) != set(SERVICES[service]):
                raise RuntimeError(f"{service}: handlers {sorted(table)} != methods {sorted(SERVICES[service])}")
            rpc = {}
            for method, fn in table.items():
                request_type = SERVICES[service][method][0]
                on_loop = self._wrap(service, method, request_type, fn)
                if method == "Predict" and getattr(self.core, "predict_blocking", None) is not None:
                    sync = self._wrap_blocking_predict(service, method, request_type, on_loop)
                else:
                    sync = self._bridge(on_loop)
                rpc[method] = grpc.unary_unary_rpc_method_handler(
                    sync, request_deserializer=None, response_serializer=_serialize)
            handlers.append(grpc.method_handlers_generic_handler(service, rpc))
        handlers.append(self._threaded_health_handler())
        server.add_generic_rpc_handlers(tuple(handlers))

    def _threaded_health_handler(self) -> grpc.GenericRpcHandler:
        """grpc.health.v1 for the thread-pool server, with Check on threads of its own.

        Every call of the thread-pool server waits for one of its ``--grpc_max_threads`` threads, and a
        Predict holds one for as long as the model runs: with that many slow requests in flight, a
        liveness or readiness probe would wait behind them and time out, and the orchestrator would
        restart a server that is only busy. gRPC runs a behaviour that carries an
        ``experimental_thread_pool`` in that pool instead; Check takes microseconds, so two threads
        serve any number of probes. Watch starts there too and then holds no thread (the servicer
        answers it through callbacks).
        """
        from concurrent.futures import ThreadPoolExecutor

        from grpc_health.v1 import health_pb2

        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="teeserve-health")
        servicer = self.health

        def check(request: Any, context: Any) -> Any:
            return servicer.Check(request, context)

        def watch(request: Any, context: Any, send_response_callback: Any = None) -> Any:
            return servicer.Watch(request, context, send_response_callback)

        check.experimental_thread_pool = pool  # type: ignore[attr-defined]
        watch.experimental_thread_pool = pool  # type: ignore[attr-defined]
        watch.experimental_non_blocking = True  # type: ignore[attr-defined]
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString),
        })

    def _bridge(self, on_loop: Callable[..., Awaitable[Any]]) -> Callable[[bytes, Any], Any]:
        """A sync handler that runs the aio handler on the event loop and waits for it."""
        loop = self._loop
        assert loop is not None

        def handler(data: bytes, context: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(on_loop(data, _LoopContext()), loop)
            ended = threading.Event()
            future.add_done_callback(lambda _f: ended.set())
            # The RPC ends early when the client cancels or its deadline passes: stop waiting then,
            # or a call that waits long (a reload whose models load slowly, or that waits for a
            # --workers peer still starting) would hold one of the --grpc_max_threads threads for
            # good. The work itself goes on on the loop: a reload cut off halfway would leave a
            # config half applied, which is worse than one applied after the client gave up.
            if not context.add_callback(ended.set):
                ended.set()  # the RPC has already ended
            ended.wait()
            if not future.done():
                context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call or its deadline passed")
            try:
                return future.result()
            except _Abort as exc:
                context.abort(exc.code, exc.details)

        return handler

    def _wrap_blocking_predict(self, service: str, method: str, request_type: str,
                               on_loop: Callable[..., Awaitable[Any]]) -> Callable[[bytes, Any], Any]:
        """Predict in the calling gRPC worker thread (same error boundary and metrics as :meth:`_wrap`)."""
        request_class = message_class(request_type)
        bridged = self._bridge(on_loop)
        core = self.core
        api = method

        def handler(data: bytes, context: Any) -> Any:
            if not getattr(core, "blocking_predict", True):
                return bridged(data, context)  # batching: the batch queues live on the event loop
            start = time.perf_counter()
            model = UNKNOWN_MODEL
            abort: tuple[grpc.StatusCode, str] | None = None
            try:
                try:
                    request = request_class.FromString(data)
                except (DecodeError, RecursionError, ValueError):
                    raise ServingError(
                        Code.INVALID_ARGUMENT, f"could not parse the request as a {request_type}"
                    ) from None
                name = _request_model_name(request)
                if name in self._known_models:
                    model = name
                response = self._predict_blocking(request)
                if name:
                    self._known_models.add(name)
                    model = name
                self._record(model, api, "OK", start)
                return response
            except ServingError as exc:
                self._record(model, api, exc.code.name, start)
                abort = (STATUS_CODES[exc.code], exc.message)
            except Exception:
                log.exception("bug in %s/%s: reported to the client as INTERNAL", service, method)
                self._record(model, api, "INTERNAL", start)
                abort = (grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)
            context.abort(*abort)  # raises: gRPC ends the call with this status

        return handler

    def _predict_blocking(self, request: Any) -> Any:
        ref = _request_ref(request)
        inputs = {alias: tensor_proto_to_ndarray(tp, alias) for alias, tp in request.inputs.items()}
        result = self.core.predict_blocking(ref, request.model_spec.signature_name, inputs,
                                            list(request.output_filter))
        return self._predict_response(result)

    async def init_health(self) -> None:
        """Liveness SERVING, readiness NOT_SERVING (call before the server starts accepting)."""
        from grpc_health.v1 import health_pb2

        await self._health_set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        for name in HEALTH_SERVICES:
            await self._health_set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_ready(self, ready: bool) -> None:
        from grpc_health.v1 import health_pb2

        if self._draining or ready == self._ready:
            return
        self._ready = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in HEALTH_SERVICES:
            await self._health_set(name, status)

    async def enter_drain(self) -> None:
        """Every health service NOT_SERVING, for good (load balancers stop sending new requests)."""
        self._draining = True
        outcome = self.health.enter_graceful_shutdown()
        if inspect.isawaitable(outcome):
            await outcome

    async def _health_set(self, name: str, status: Any) -> None:
        outcome = self.health.set(name, status)
        if inspect.isawaitable(outcome):
            await outcome

    # --- the error boundary --------------------------------------------------------------------

    def _wrap(self, service: str, method: str, request_type: str, fn: Handler) -> Callable[..., Awaitable[Any]]:
        request_class = message_class(request_type)
        inference = method in ("Predict", "Classify", "Regress", "MultiInference")
        api = method

        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            model = UNKNOWN_MODEL
            try:
                try:
                    request = request_class.FromString(data)
                except (DecodeError, RecursionError, ValueError):
                    raise ServingError(
                        Code.INVALID_ARGUMENT, f"could not parse the request as a {request_type}"
                    ) from None
                name = _request_model_name(request)
                if name in self._known_models:
                    model = name
                if inference and self._limit is not None:
                    async with self._limit:
                        response = await fn(request, context)
                else:
                    response = await fn(request, context)
                if name:
                    self._known_models.add(name)
                    model = name
                self._record(model, api, "OK", start)
                return response
            except ServingError as exc:
                self._record(model, api, exc.code.name, start)
                await context.abort(STATUS_CODES[exc.code], exc.message)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                log.exception("bug in %s/%s: reported to the client as INTERNAL", service, method)
                self._record(model, api, "INTERNAL", start)
                await context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)

        return handler

    def _record(self, model: str, api: str, status: str, start: float) -> None:
        if self._metrics is not None:
            self._metrics.record_request(model, api, "GRPC", status, time.perf_counter() - start)

    # --- PredictionService ---------------------------------------------------------------------

    async def predict(self, request: Any, context: Any) -> Any:
        ref = _request_ref(request)
        inputs = {alias: tensor_proto_to_ndarray(tp, alias) for alias, tp in request.inputs.items()}
        result = await self.core.predict(ref, request.model_spec.signature_name, inputs, list(request.output_filter))
        return self._predict_response(result)

    def _predict_response(self, result: Any) -> Any:
        response = pb.PredictResponse()
        _set_spec(response.model_spec, result.name, result.version, result.signature_name)
        outputs = response.outputs
        for alias, array in result.outputs.items():
            encode_output(outputs[alias], array, tensor_content=self._tensor_content)
        return response

    async def get_model_metadata(self, request: Any, context: Any) -> Any:
        # Same order of checks as TensorFlow Serving's GetModelMetadataImpl.
        if not request.HasField("model_spec"):
            raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
        if not request.metadata_field:
            raise ServingError(Code.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
        for f in request.metadata_field:
            if f != "signature_def":
                raise ServingError(Code.INVALID_ARGUMENT, f"Metadata field {f} is not supported")
        ref = _model_ref(request.model_spec)
        name, version, signatures = self.core.signatures(ref)
        response = pb.GetModelMetadataResponse()
        _set_spec(response.model_spec, name, version, None)
        packed = response.metadata["signature_def"]
        packed.type_url = _TYPE_URL_PREFIX + _SIGNATURE_DEF_MAP
        packed.value = signature_def_map(signatures).SerializeToString()
        return response

    async def classify(self, request: Any, context: Any) -> Any:
        return await self._example_api(request, self.core.classify, pb.ClassificationResponse())

    async def regress(self, request: Any, context: Any) -> Any:
        return await self._example_api(request, self.core.regress, pb.RegressionResponse())

    async def _example_api(self, request: Any, run: Any, response: Any) -> Any:
        """Classify and Regress: the same tf.Example request shape, one core call, one result field."""
        ref = _request_ref(request)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        name, version, result = await run(ref, request.model_spec.signature_name, request.input)
        _set_spec(response.model_spec, name, version, signature)
        response.result.CopyFrom(result)
        return response

    async def multi_inference(self, request: Any, context: Any) -> Any:
        # TensorFlow Serving's checks (multi_inference.cc), in its order.
        if not request.tasks:
            raise ServingError(Code.INVALID_ARGUMENT, "MultiInferenceRequest must specify at least one task.")
        model_name = ""
        seen: set[str] = set()
        for task in request.tasks:
            if not task.model_spec.name:
                raise ServingError(Code.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
            if model_name and task.model_spec.name != model_name:
                raise ServingError(
                    Code.INVALID_ARGUMENT, "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            model_name = task.model_spec.name
            signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature in seen:
                raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {signature}")
            seen.add(signature)
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        multi = getattr(self.core, "multi_inference", None)
        if multi is not None:  # the core runs every task on one resolved version
            return await multi(request)
        response = pb.MultiInferenceResponse()
        for task in request.tasks:
            ref = _model_ref(task.model_spec)
            signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
            run = self.core.classify if task.method_name == CLASSIFY_METHOD else self.core.regress
            name, version, result = await run(ref, task.model_spec.signature_name, request.input)
            out = response.results.add()
            _set_spec(out.model_spec, name, version, signature)
            if task.method_name == CLASSIFY_METHOD:
                out.classification_result.CopyFrom(result)
            else:
                out.regression_result.CopyFrom(result)
        return response

    # --- ModelService --------------------------------------------------------------------------

    async def get_model_status(self, request: Any, context: Any) -> Any:
        if not request.HasField("model_spec"):
            raise ServingError(Code.INVALID_ARGUMENT, "Missing ModelSpec")
        ref = _model_ref(request.model_spec)
        statuses = self.core.model_status(ref.name, ref.version, ref.label)
        response = pb.GetModelStatusResponse()
        for st in statuses:
            mvs = response.model_version_status.add()
            mvs.version = st.version
            mvs.state = int(st.state)
            mvs.status.error_code = int(st.error_code)
            mvs.status.error_message = st.error_message
        return response

    async def handle_reload_config_request(self, request: Any, context: Any) -> Any:
        if self._reload is None:
            raise ServingError(Code.UNIMPLEMENTED, "this server cannot reload its model config")
        if not request.HasField("config"):
            raise ServingError(Code.INVALID_ARGUMENT, "ReloadConfigRequest has no config")
        log.info("model config reload requested over gRPC")
        outcome = self._reload(request.config)
        if inspect.isawaitable(outcome):
            # A reload runs to its end even when the client gives up (deadline, cancellation): cut off
            # halfway it would leave neither the old config nor the new one (as on the threaded server,
            # where _bridge lets it go on).
            task = asyncio.ensure_future(outcome)
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(_log_orphaned_reload)
                raise
        response = pb.ReloadConfigResponse()
        response.status.error_code = int(Code.OK)
        return response


def _log_orphaned_reload(task: asyncio.Future[Any]) -> None:
    """The outcome of a reload whose client had gone (also marks its exception as retrieved)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        log.info("a model config reload finished after its client had gone: applied")
    else:
        detail = exc.message if isinstance(exc, ServingError) else type(exc).__name__
        log.warning("a model config reload finished after its client had gone: failed: %s", detail)


class _Abort(Exception):
    """An abort of a call run on the event loop for the threaded server (re-raised by gRPC's own
    ``context.abort`` in the waiting worker thread)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class _LoopContext:
    """The part of ``grpc.aio.ServicerContext`` the handlers use, for calls bridged to the loop."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Abort(code, details)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _request_model_name(request: Any) -> str:
    spec = getattr(request, "model_spec", None)
    if spec is not None:
        return str(spec.name)
    tasks = getattr(request, "tasks", None)
    if tasks:
        return str(tasks[0].model_spec.name)
    return ""
