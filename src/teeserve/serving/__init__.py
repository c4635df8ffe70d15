"""The TensorFlow-Serving-compatible inference server (gRPC and REST front ends over one core)."""

from __future__ import annotations

from ._types import (
    Code,
    ModelRef,
    PredictResult,
    ServingError,
    Signature,
    TensorSpec,
    VersionState,
    VersionStatus,
)

__all__ = [
    "Code",
    "ModelRef",
    "PredictResult",
    "ServingError",
    "Signature",
    "TensorSpec",
    "VersionState",
    "VersionStatus",
]
