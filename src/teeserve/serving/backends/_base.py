"""What every backend provides: a loaded servable with signatures and a synchronous ``run``.

Strategy: a servable is immutable once loaded. ``run`` is called from the core's inference thread
pool (never on the event loop), concurrently, with inputs already validated against the signature
(names, dtypes, ranks and fixed dimensions), and returns the requested outputs as numpy arrays.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from ..._errors import TeeserveError
from .._types import Code, Signature

__all__ = ["Servable", "LoadError"]


class LoadError(TeeserveError):
    """A version failed to load. ``code``/``message`` become its status in GetModelStatus.

    ``permanent`` is True when retrying cannot help (a protected file failed authentication or is
    bound to another path, a warmup record is invalid): the manager does not retry such loads. A
    model that does not parse may still be being copied in, so that is retried.
    """

    def __init__(self, code: Code, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.permanent = permanent


class Servable(abc.ABC):
    """One loaded model version."""

    #: the ``runtime`` label of the runtime-latency metric ("ONNXRuntime", "TensorFlow")
    runtime: str = ""
    signatures: dict[str, Signature]

    @abc.abstractmethod
    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_aliases: Sequence[str]) -> dict[str, np.ndarray]:
        """Run one signature. Thread-safe; raises ServingError for a request the model rejects."""

    def close(self) -> None:
        """Release the runtime's resources (the servable is unreachable by then)."""
