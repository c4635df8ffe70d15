"""One REST request in, one response out: routing, the JSON codec and the serving core, no sockets.

Strategy: :class:`RestHandler` is the whole REST API as an ``async`` function of (method, path, body)
that returns a :class:`Response`; the HTTP shell in ``_server.py`` only frames bytes. It depends on the
core through :class:`ServingCoreAPI` alone. Every outcome is a response: a :class:`ServingError`
becomes ``{"error": message}`` with TF Serving's HTTP status (``HTTP_STATUS``), a timeout becomes 504,
and anything else (a bug) becomes 500 ``{"error": "Internal error"}`` plus one log line with the
traceback — never a traceback to the client.

Large bodies (over ``offload_bytes``) are decoded and their responses encoded on a thread pool
(``--rest_api_num_threads``), so that a big JSON image does not stall the event loop that also answers
health probes; small requests stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._api import ServingCoreAPI
from .._metrics import UNKNOWN_MODEL, Metrics
from .._types import DEFAULT_SIGNATURE, HTTP_STATUS, Code, ModelRef, ServingError
from . import _codec
from ._routes import Endpoint, Route, route

__all__ = ["RestHandler", "Response", "JSON", "DEFAULT_OFFLOAD_BYTES"]

log = logging.getLogger("teeserve.serving.rest")

JSON = "application/json"
#: Bodies larger than this are decoded on the thread pool rather than on the event loop.
DEFAULT_OFFLOAD_BYTES = 256 * 1024

_T = TypeVar("_T")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def error_response(code: Code, message: str) -> Response:
    return Response(HTTP_STATUS.get(code, 500), _codec.encode_error(message))


class RestHandler:
    """The REST API over a serving core (see the module docstring)."""

    def __init__(
        self,
        core: ServingCoreAPI,
        metrics: Metrics,
        *,
        timeout_ms: int = 30000,
        monitoring_path: str | None = None,
        executor: Executor | None = None,
        offload_bytes: int = DEFAULT_OFFLOAD_BYTES,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.timeout_ms = timeout_ms
        self.monitoring_path = monitoring_path
        self.executor = executor
        self.offload_bytes = offload_bytes
        #: Set when the server starts draining: readiness then answers 503.
        self.draining = False

    async def handle(self, method: str, path: str, body: bytes) -> Response:
        start = time.perf_counter()
        try:
            r = route(method, path, self.monitoring_path)
        except ServingError as exc:
            return error_response(exc.code, exc.message)
        if r.endpoint is Endpoint.LIVE:
            return Response(200, b'{"status":"alive"}')
        if r.endpoint is Endpoint.READY:
            return self._ready()
        if r.endpoint is Endpoint.METRICS:
            data, content_type = self.metrics.render()
            return Response(200, data, content_type)

        code = Code.OK
        try:
            timeout = self.timeout_ms / 1000 if self.timeout_ms and self.timeout_ms > 0 else None
            try:
                async with asyncio.timeout(timeout) as scope:
                    response = await self._model_request(r, body)
            except TimeoutError:
                if not scope.expired():
                    raise
                raise ServingError(
                    Code.DEADLINE_EXCEEDED,
                    f"Deadline exceeded: the request did not finish within {self.timeout_ms} ms",
                ) from None
            return response
        except ServingError as exc:
            code = exc.code
            return error_response(exc.code, exc.message)
        except asyncio.CancelledError:
            code = Code.CANCELLED
            raise
        except Exception:
            code = Code.INTERNAL
            log.exception("internal error serving %s %s (%s)", method, path[:200], r.endpoint.value)
            return error_response(Code.INTERNAL, "Internal error")
        finally:
            self._record(r, code, time.perf_counter() - start)

    # --- endpoints ---------------------------------------------------------------------------------

    def _ready(self) -> Response:
        if self.draining:
            return Response(503, _codec.encode_error("Server is shutting down"))
        try:
            ready = self.core.is_ready()
        except Exception:
            log.exception("readiness check failed")
            ready = False
        if ready:
            return Response(200, b'{"status":"ready"}')
        return Response(503, _codec.encode_error("Server is not ready: not every model has an available version"))

    async def _model_request(self, r: Route, body: bytes) -> Response:
        ref = ModelRef(r.model, r.version, r.label)
        big = len(body) > self.offload_bytes
        if r.endpoint is Endpoint.PREDICT:
            doc, sig_name = await self._run(big, _codec.parse_predict, body)
            _, _, signatures = self.core.signatures(ref)
            key = sig_name or DEFAULT_SIGNATURE
            signature = signatures.get(key)
            if signature is None:
                raise ServingError(Code.INVALID_ARGUMENT, f'Serving signature name: "{key}" not found in signature def')
            fmt, inputs = await self._run(big, _codec.predict_inputs, doc, signature.inputs)
            del doc
            result = await self.core.predict(ref, sig_name, inputs)
            del inputs
            out_big = sum(getattr(a, "nbytes", 0) for a in result.outputs.values()) > self.offload_bytes // 4
            data = await self._run(out_big, _codec.encode_predict_response, result.outputs, fmt)
            return Response(200, data)
        if r.endpoint in (Endpoint.CLASSIFY, Endpoint.REGRESS):
            method = "classify" if r.endpoint is Endpoint.CLASSIFY else "regress"
            sig_name, input_proto = await self._run(big, _codec.parse_classify_regress, body, method)
            if r.endpoint is Endpoint.CLASSIFY:
                _, _, result = await self.core.classify(ref, sig_name, input_proto)
                return Response(200, _codec.encode_classification_result(result))
            _, _, result = await self.core.regress(ref, sig_name, input_proto)
            return Response(200, _codec.encode_regression_result(result))
        if r.endpoint is Endpoint.STATUS:
            statuses = self.core.model_status(r.model, r.version, r.label)
            return Response(200, _codec.encode_model_status(list(statuses)))
        if r.endpoint is Endpoint.METADATA:
            name, version, signatures = self.core.signatures(ref)
            return Response(200, _codec.encode_model_metadata(name, version, signatures))
        raise AssertionError(f"unrouted endpoint {r.endpoint}")  # pragma: no cover

    async def _run(self, offload: bool, fn: Callable[..., _T], *args: Any) -> _T:
        if offload and self.executor is not None:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        return fn(*args)

    # --- metrics -----------------------------------------------------------------------------------

    def _record(self, r: Route, code: Code, seconds: float) -> None:
        model = r.model
        if code is not Code.OK and not self._known_model(model):
            model = UNKNOWN_MODEL  # names from the network must not grow the label set without bound
        try:
            self.metrics.record_request(model, r.endpoint.value, "REST", code.name, seconds)
        except Exception:  # metrics must never fail a request
            log.exception("recording request metrics failed")

    def _known_model(self, name: str) -> bool:
        try:
            return bool(self.core.model_status(name))
        except Exception:
            return False
