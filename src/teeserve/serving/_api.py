"""The contract between the serving core and its front ends.

The gRPC and REST front ends depend only on this Protocol, so each can be tested against a small fake
core, and the core knows nothing of HTTP or gRPC. All methods raise :class:`ServingError` for request
errors; any other exception is a bug and is reported as INTERNAL without details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ._types import ModelRef, PredictResult, Signature, VersionStatus

__all__ = ["ServingCoreAPI"]


class ServingCoreAPI(Protocol):
    async def predict(
        self,
        ref: ModelRef,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> PredictResult:
        """Run a predict signature (empty ``signature_name`` = ``serving_default``). Off the event loop."""
        ...

    async def classify(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        """Classify tf.Examples (``input_proto`` is a vendored ``tensorflow.serving.Input``).

        Returns (model name, version, ``tensorflow.serving.ClassificationResult``)."""
        ...

    async def regress(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        """Like :meth:`classify`, returning a ``tensorflow.serving.RegressionResult``."""
        ...

    def signatures(self, ref: ModelRef) -> tuple[str, int, Mapping[str, Signature]]:
        """(model name, resolved version, signature name -> Signature) for metadata requests."""
        ...

    def model_status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Status of one model's versions (all, or the one asked for)."""
        ...

    def is_ready(self) -> bool:
        """True once every configured model has at least one AVAILABLE version (and keys are in)."""
        ...
