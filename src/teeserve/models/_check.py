"""Comparing a converted model with its source: random inputs and output comparison.

Strategy: a conversion is only trusted once both models have been run on the *same* input and every
output agrees. Float outputs must be ``allclose`` within a stated tolerance; integer, boolean and
string outputs must be equal. Random inputs are drawn from a seeded generator so a failure is
reproducible. This module is plain numpy: the callers run the models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._errors import VerificationError

__all__ = ["Tolerance", "OutputDiff", "Comparison", "compare_outputs", "random_input", "SAME_GRAPH", "ONNX"]


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` elementwise, as :func:`numpy.allclose`."""

    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


#: The same graph run by the same TensorFlow kernels (frozen graph -> SavedModel): should be bit-exact.
SAME_GRAPH = Tolerance(rtol=1e-6, atol=1e-6)
#: TensorFlow vs ONNX Runtime: different kernels and fusion, float32 rounding differs slightly.
ONNX = Tolerance(rtol=1e-3, atol=1e-5)


@dataclass(frozen=True, slots=True)
class OutputDiff:
    name: str
    max_abs_diff: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Comparison:
    """The result of running source and converted model on one input."""

    outputs: tuple[OutputDiff, ...]
    tolerance: Tolerance

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def max_abs_diff(self) -> float:
        return max((o.max_abs_diff for o in self.outputs), default=0.0)

    def summary(self) -> str:
        parts = ", ".join(f"{o.name} {o.max_abs_diff:.3g}" for o in self.outputs)
        return f"max abs diff {self.max_abs_diff:.3g} ({parts}; tolerance {self.tolerance})"

    def raise_for_mismatch(self, what: str) -> None:
        bad = [o for o in self.outputs if not o.ok]
        if bad:
            names = ", ".join(f"{o.name!r} (max abs diff {o.max_abs_diff:.3g})" for o in bad)
            raise VerificationError(
                f"{what}: converted model disagrees with the source on {names}; tolerance {self.tolerance}"
            )


def compare_outputs(
    source: Mapping[str, np.ndarray], converted: Mapping[str, np.ndarray], tolerance: Tolerance
) -> Comparison:
    """Compare two output dicts (alias -> array). Missing or extra outputs are a mismatch."""
    diffs = []
    for name in sorted(set(source) | set(converted)):
        if name not in source or name not in converted:
            diffs.append(OutputDiff(name, float("inf"), False))
            continue
        a, b = np.asarray(converted[name]), np.asarray(source[name])
        if a.shape != b.shape:
            diffs.append(OutputDiff(name, float("inf"), False))
        elif a.dtype.kind == "f" or b.dtype.kind == "f":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
            ok = bool(np.allclose(a64, b64, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True))
            diffs.append(OutputDiff(name, diff, ok))
        elif a.dtype.kind in "iub":
            diff = float(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0.0
            diffs.append(OutputDiff(name, diff, diff == 0.0))
        else:  # strings, objects
            equal = bool(np.array_equal(a, b))
            diffs.append(OutputDiff(name, 0.0 if equal else float("inf"), equal))
    return Comparison(tuple(diffs), tolerance)


#: Size used for an unknown dimension: batch (first) dimension, then any other.
UNKNOWN_BATCH = 2
UNKNOWN_DIM = 64


def random_input(
    name: str, shape: Sequence[int | None] | None, dtype: np.dtype, rng: np.random.Generator
) -> np.ndarray:
    """A random array for input ``name``: floats ~ N(0, 1), integers in [0, 10), booleans.

    Unknown dimensions become 2 (the first) or 64 (the others).

    Raises:
        VerificationError: the input has unknown rank or a type random data cannot stand for
            (strings, resources); such models need ``--no-verify``.
    """
    if shape is None:
        raise VerificationError(
            f"cannot verify: input {name!r} has unknown rank, so no random input can be made "
            "(use --no-verify to convert without checking)"
        )
    dims = [
        d if d is not None and d >= 0 else (UNKNOWN_BATCH if i == 0 else UNKNOWN_DIM)
        for i, d in enumerate(shape)
    ]
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=dims).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=dims).astype(bool)
    raise VerificationError(
        f"cannot verify: input {name!r} has type {dtype} that random data cannot stand for "
        "(use --no-verify to convert without checking)"
    )
