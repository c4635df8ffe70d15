"""Domain types shared by the serving core and its two front ends (gRPC and REST).

Strategy (anchors.md item 11): the core speaks only these types plus numpy arrays and, for the
tf.Example-based APIs, the vendored protos; the front ends convert wire formats to and from them and
map :class:`ServingError` codes to a gRPC status or an HTTP status in one table each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import TeeserveError

__all__ = [
    "Code",
    "HTTP_STATUS",
    "ServingError",
    "TensorSpec",
    "Signature",
    "ModelRef",
    "VersionState",
    "VersionStatus",
    "PredictResult",
    "PREDICT_METHOD",
    "CLASSIFY_METHOD",
    "REGRESS_METHOD",
    "DEFAULT_SIGNATURE",
]

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


class Code(enum.IntEnum):
    """Canonical status codes (``tensorflow.error.Code`` = ``grpc.StatusCode`` values)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


#: TensorFlow Serving's canonical code -> HTTP status mapping (tf-serving-api.md §2.4).
HTTP_STATUS: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(TeeserveError):
    """A request failed with a canonical ``code``; ``message`` is what the client sees.

    Messages follow TensorFlow Serving's exact strings where it has one (tf-serving-api.md §9) and
    never contain key material or tensor contents.
    """

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a signature: the graph tensor name, its dtype and shape.

    ``dtype`` is a TensorFlow ``DataType`` enum value (DT_FLOAT = 1, ...); ``shape`` uses -1 for an
    unknown dimension and is ``None`` for unknown rank.
    """

    name: str
    dtype: int
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class Signature:
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which servable a request asks for: a model name and at most one of version or label."""

    name: str
    version: int | None = None
    label: str | None = None


class VersionState(enum.IntEnum):
    """``ModelVersionStatus.State`` values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True, slots=True)
class VersionStatus:
    version: int
    state: VersionState
    error_code: Code = Code.OK
    error_message: str = ""


@dataclass(slots=True)
class PredictResult:
    """Outputs of a Predict call and the servable that produced them (echoed in ``model_spec``)."""

    name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)
