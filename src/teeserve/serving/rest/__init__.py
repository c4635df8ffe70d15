"""TensorFlow Serving's REST API (tf-serving-api.md §2), over HTTP/1.1 with TLS, plus health and metrics.

::

    from teeserve.serving.rest import start_rest_server

    server = await start_rest_server(core, "0.0.0.0", 8501, ssl_context=ctx, timeout_ms=30000,
                                     monitoring_path="/monitoring/prometheus/metrics")
    ...
    await server.close(grace=10)   # stop accepting, finish in-flight requests

Endpoints: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata]``,
``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:(predict|classify|regress)``, the Prometheus text at the
monitoring path, and teeserve's health URLs ``GET /v1/health/live`` (200 while the process serves) and
``GET /v1/health/ready`` (200 once the core is ready, 503 before and while draining). Neither health URL
waits for a model: inference runs off the event loop.

Layers (sans-IO core, thin shell): ``_codec`` (JSON <-> numpy/protos, pure), ``_routes`` (paths,
pure), ``_handler`` (one request -> one response over a ``ServingCoreAPI``), ``_server`` (asyncio +
httptools). Request errors are :class:`teeserve.serving.ServingError`; this package adds no exception
classes of its own.
"""

from __future__ import annotations

from ._codec import (
    RequestFormat,
    encode_classification_result,
    encode_error,
    encode_model_metadata,
    encode_model_status,
    encode_predict_response,
    encode_regression_result,
    parse_classify_regress,
    parse_json,
    parse_predict,
    predict_inputs,
)
from ._handler import RestHandler, Response
from ._routes import DEFAULT_MONITORING_PATH, LIVE_PATH, READY_PATH, Endpoint, Route, route
from ._server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_HEADER_BYTES, RestServer, start_rest_server

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MONITORING_PATH",
    "Endpoint",
    "LIVE_PATH",
    "READY_PATH",
    "RequestFormat",
    "Response",
    "RestHandler",
    "RestServer",
    "Route",
    "encode_classification_result",
    "encode_error",
    "encode_model_metadata",
    "encode_model_status",
    "encode_predict_response",
    "encode_regression_result",
    "parse_classify_regress",
    "parse_json",
    "parse_predict",
    "predict_inputs",
    "route",
    "start_rest_server",
]
