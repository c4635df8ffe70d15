"""The output comparison used to verify conversions (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from teeserve.models import VerificationError
from teeserve.models._check import ONNX, SAME_GRAPH, compare_outputs, random_input


def test_equal_outputs_pass() -> None:
    a = {"p": np.array([[0.1, 0.9]], np.float32), "c": np.array([1], np.int64)}
    cmp = compare_outputs(a, dict(a), SAME_GRAPH)
    assert cmp.ok and cmp.max_abs_diff == 0.0
    cmp.raise_for_mismatch("x")


def test_float_tolerance() -> None:
    src = {"p": np.array([1.0, 100.0], np.float32)}
    assert compare_outputs(src, {"p": src["p"] + np.float32(5e-6)}, ONNX).ok
    bad = compare_outputs(src, {"p": np.array([1.01, 100.0], np.float32)}, ONNX)
    assert not bad.ok and bad.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(VerificationError, match="'p' \\(max abs diff 0.01"):
        bad.raise_for_mismatch("m.pb -> ONNX")


def test_integer_string_shape_and_name_mismatches() -> None:
    assert not compare_outputs({"c": np.array([1, 2])}, {"c": np.array([1, 3])}, ONNX).ok
    assert not compare_outputs({"s": np.array([b"a"])}, {"s": np.array([b"b"])}, ONNX).ok
    assert compare_outputs({"s": np.array([b"a"])}, {"s": np.array([b"a"])}, ONNX).ok
    assert not compare_outputs({"p": np.zeros((2, 3))}, {"p": np.zeros((3, 2))}, ONNX).ok
    missing = compare_outputs({"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1)}, ONNX)
    assert not missing.ok and [o.name for o in missing.outputs if not o.ok] == ["b"]


def test_random_input_shapes_and_types() -> None:
    rng = np.random.default_rng(0)
    x = random_input("x", [None, 224, 224, 3], np.float32, rng)
    assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32
    ids = random_input("ids", [None, None], np.int32, rng)
    assert ids.shape == (2, 64) and ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 10
    assert random_input("b", [3], np.bool_, rng).dtype == np.bool_
    with pytest.raises(VerificationError, match="unknown rank.*--no-verify"):
        random_input("u", None, np.float32, rng)
    with pytest.raises(VerificationError, match="'s' has type"):
        random_input("s", [None], np.dtype(object), rng)
