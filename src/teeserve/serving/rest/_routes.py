"""Which REST endpoint a request path names: TF Serving's path regexes plus teeserve's health paths.

Strategy: pure code over (method, path) strings. TensorFlow Serving (``http_rest_api_util.cc``) matches
two case-insensitive regexes over the full path (query strings are ignored), URL-decodes the model
name and label, and answers any other ``/v1/...`` request with INVALID_ARGUMENT
``Malformed request: <METHOD> <path>`` (HTTP 400). Paths outside ``/v1/`` have no handler in TF
Serving (HTTP 404); teeserve answers them with a JSON 404 body. Like TF Serving, the method name and
the ``metadata`` sub-resource are compared case-sensitively *after* the case-insensitive match, so
``:PREDICT`` is a malformed request and ``/METADATA`` asks for the model status.

teeserve additions (TF Serving has no model-independent health URL, tensorflow/serving#671, #1754):

- ``GET /v1/health/live``: 200 while the process serves HTTP at all;
- ``GET /v1/health/ready``: 200 when the core reports ready (every configured model has an AVAILABLE
  version), 503 otherwise and while the server drains;
- the Prometheus text at the configured monitoring path (default ``/monitoring/prometheus/metrics``)
  when monitoring is enabled.
"""

from __future__ import annotations

import enum
import re
import functools
from dataclasses import dataclass
from urllib.parse import unquote

from .._types import Code, ServingError

__all__ = ["Endpoint", "Route", "route", "LIVE_PATH", "READY_PATH", "DEFAULT_MONITORING_PATH"]

LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"
DEFAULT_MONITORING_PATH = "/monitoring/prometheus/metrics"

_PREDICTION = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_MODEL = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_V1 = re.compile(r"/v1/.*", re.I | re.S)
_INT64_MAX = 2**63 - 1


class Endpoint(enum.Enum):
    PREDICT = "Predict"
    CLASSIFY = "Classify"
    REGRESS = "Regress"
    STATUS = "GetModelStatus"
    METADATA = "GetModelMetadata"
    LIVE = "live"
    READY = "ready"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    model: str = ""
    version: int | None = None
    label: str | None = None


_METHODS = {"predict": Endpoint.PREDICT, "classify": Endpoint.CLASSIFY, "regress": Endpoint.REGRESS}


def _malformed(method: str, path: str) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, f"Malformed request: {method} {path}")


def _version(text: str | None) -> int | None:
    if not text:
        return None
    # More than 20 digits is beyond int64 for sure (and int() refuses more than 4300 digits).
    value = int(text) if len(text) <= 20 else _INT64_MAX + 1
    if value > _INT64_MAX:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ServingError(Code.INVALID_ARGUMENT, f"Failed to convert version: {shown} to numeric.")
    return value


#: Paths up to this long are cached (512 of them): a client sending ever new long paths must not pin
#: megabytes (a path may be as long as the header limit).
_CACHED_PATH_LEN = 256


def route(method: str, path: str, monitoring_path: str | None = None) -> Route:
    """Map a request to an endpoint (see :func:`_route`); short paths are answered from a cache, since a
    route is a pure function of its arguments (errors are raised again each time, never cached)."""
    if len(path) <= _CACHED_PATH_LEN:
        return _cached_route(method, path, monitoring_path)
    return _route(method, path, monitoring_path)


def _route(method: str, path: str, monitoring_path: str | None = None) -> Route:
    """Map a request to an endpoint.

    ``path`` is the URL path without the query string, still percent-encoded.

    Raises:
        ServingError: INVALID_ARGUMENT ``Malformed request: ...`` for unknown ``/v1/`` requests,
            NOT_FOUND for paths outside ``/v1/``.
    """
    if monitoring_path is not None and path == monitoring_path:
        if method in ("GET", "HEAD"):
            return Route(Endpoint.METRICS)
        raise _malformed(method, path)
    if path == LIVE_PATH and method in ("GET", "HEAD"):
        return Route(Endpoint.LIVE)
    if path == READY_PATH and method in ("GET", "HEAD"):
        return Route(Endpoint.READY)
    if method == "POST":
        m = _PREDICTION.fullmatch(path)
        if m is not None:
            endpoint = _METHODS.get(m.group(4))
            if endpoint is None:  # case-insensitive match, case-sensitive dispatch (as TF Serving)
                raise _malformed(method, path)
            label = unquote(m.group(3)) if m.group(3) else None
            return Route(endpoint, unquote(m.group(1)), _version(m.group(2)), label)
    elif method == "GET":
        m = _MODEL.fullmatch(path)
        if m is not None:
            name = unquote(m.group(1)) if m.group(1) else ""
            if not name:
                raise ServingError(Code.INVALID_ARGUMENT, "Missing model name in request.")
            label = unquote(m.group(3)) if m.group(3) else None
            endpoint = Endpoint.METADATA if m.group(4) == "metadata" else Endpoint.STATUS
            return Route(endpoint, name, _version(m.group(2)), label)
    if _V1.fullmatch(path):
        raise _malformed(method, path)
    raise ServingError(Code.NOT_FOUND, f"Not found: {method} {path}")


_cached_route = functools.lru_cache(maxsize=512)(_route)
