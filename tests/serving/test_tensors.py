"""TensorProto <-> numpy: every input form TensorFlow accepts, checked against TensorFlow itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from teeserve._proto import pb
from teeserve.serving import Code, ServingError
from teeserve.serving._tensors import DT, ndarray_to_tensor_proto, tensor_proto_to_ndarray, tf_dtype

NUMERIC = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8, np.int16, np.uint16,
           np.uint32, np.uint64, np.bool_, np.float16, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", NUMERIC)
def test_round_trip_through_tensor_content(dtype: type) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((2, 3, 4)) * 50).astype(dtype)
    tp = ndarray_to_tensor_proto(arr)
    assert tp.tensor_content and tp.dtype == tf_dtype(arr.dtype)
    back = tensor_proto_to_ndarray(pb.TensorProto.FromString(tp.SerializeToString()))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8, np.int16,
                                   np.uint16, np.bool_, np.float16, np.complex64, np.uint32, np.uint64,
                                   np.complex128])
def test_typed_val_fields_decode_like_tensorflow(dtype: type) -> None:
    """Protos made by tf.make_tensor_proto (typed *_val fields for small tensors) decode identically."""
    tf = pytest.importorskip("tensorflow")
    arr = (np.arange(6).reshape(2, 3) - 2).astype(dtype) if dtype not in (np.uint8, np.uint16, np.uint32,
                                                                          np.uint64, np.bool_) \
        else np.arange(6).reshape(2, 3).astype(dtype)
    official = tf.make_tensor_proto(arr)
    # Force the typed field form, as TF Serving's own clients do for lists.
    official_vals = tf.make_tensor_proto(arr.tolist(), dtype=tf.as_dtype(arr.dtype), shape=arr.shape)
    for proto in (official, official_vals):
        ours = pb.TensorProto.FromString(proto.SerializeToString())
        got = tensor_proto_to_ndarray(ours)
        np.testing.assert_array_equal(got, tf.make_ndarray(proto))
        assert got.dtype == arr.dtype


def test_single_value_broadcasts_and_short_list_fills_with_last() -> None:
    tp = pb.TensorProto(dtype=DT.FLOAT)
    for d in (2, 3):
        tp.tensor_shape.dim.add(size=d)
    tp.float_val.append(1.5)
    np.testing.assert_array_equal(tensor_proto_to_ndarray(tp), np.full((2, 3), 1.5, np.float32))
    tp.float_val[:] = [1.0, 2.0]
    np.testing.assert_array_equal(tensor_proto_to_ndarray(tp).reshape(-1), [1, 2, 2, 2, 2, 2])
    tp.ClearField("float_val")
    np.testing.assert_array_equal(tensor_proto_to_ndarray(tp), np.zeros((2, 3), np.float32))


def test_scalar_and_strings() -> None:
    tp = pb.TensorProto(dtype=DT.INT64)
    tp.int64_val.append(7)
    assert tensor_proto_to_ndarray(tp).shape == () and int(tensor_proto_to_ndarray(tp)) == 7
    s = pb.TensorProto(dtype=DT.STRING)
    s.tensor_shape.dim.add(size=2)
    s.string_val.extend([b"\x00\xffbin", "h\u00e9".encode()])
    got = tensor_proto_to_ndarray(s)
    assert got.dtype == object and list(got) == [b"\x00\xffbin", "hé".encode()]
    out = ndarray_to_tensor_proto(np.array(["a", "hé"]))
    assert out.dtype == DT.STRING and list(out.string_val) == [b"a", "hé".encode()]
    out = ndarray_to_tensor_proto(np.array([b"x", b"yz"], dtype=object))
    assert list(out.string_val) == [b"x", b"yz"]


def test_tensor_content_is_not_copied() -> None:
    arr = np.arange(1000, dtype=np.float32)
    tp = ndarray_to_tensor_proto(arr)
    got = tensor_proto_to_ndarray(tp)
    assert not got.flags.owndata and not got.flags.writeable  # a view on the proto's bytes


@pytest.mark.parametrize("mutate, fragment", [
    (lambda tp: setattr(tp, "tensor_content", b"\x00" * 5), "tensor_content has 5 bytes"),
    (lambda tp: tp.float_val.extend([1.0] * 7), "7 values do not fit"),
    (lambda tp: setattr(tp, "dtype", 20), "unsupported dtype"),
    (lambda tp: setattr(tp.tensor_shape, "unknown_rank", True), "unknown rank"),
    (lambda tp: tp.tensor_shape.dim.add(size=-3), "negative dimension"),
    # a few bytes that declare a huge tensor (TensorProto fills a shape from its last value, or zeros)
    (lambda tp: (tp.tensor_shape.dim.add(size=1 << 40), tp.float_val.append(1.0)), "more than the limit"),
    (lambda tp: tp.tensor_shape.dim.add(size=100_000_000), "needs 2400000000 bytes"),
    (lambda tp: (setattr(tp, "dtype", DT.STRING), tp.tensor_shape.dim.add(size=1 << 40)), "more than the limit"),
])
def test_malformed_tensors_are_invalid_argument(mutate, fragment: str) -> None:
    tp = pb.TensorProto(dtype=DT.FLOAT)
    tp.tensor_shape.dim.add(size=2)
    tp.tensor_shape.dim.add(size=3)
    mutate(tp)
    with pytest.raises(ServingError) as e:
        tensor_proto_to_ndarray(tp, "images")
    assert e.value.code == Code.INVALID_ARGUMENT
    assert fragment in e.value.message and "images" in e.value.message


def test_narrow_ints_wrap_like_tensorflow() -> None:
    tp = pb.TensorProto(dtype=DT.UINT8)
    tp.int_val.extend([300, -1, 7])
    tp.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tensor_proto_to_ndarray(tp, "x"), np.array([44, 255, 7], np.uint8))


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float32, np.int64, np.uint8, np.float64]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_round_trip_property(arr: np.ndarray) -> None:
    back = tensor_proto_to_ndarray(pb.TensorProto.FromString(ndarray_to_tensor_proto(arr).SerializeToString()))
    np.testing.assert_array_equal(back, arr)
    assert back.shape == arr.shape


def test_a_tensor_beyond_the_memory_left_is_invalid_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    from teeserve.serving import _tensors

    monkeypatch.setattr(_tensors, "MAX_TENSOR_BYTES", 2**62)  # past the limit check: numpy must refuse
    tp = pb.TensorProto(dtype=DT.FLOAT)
    tp.tensor_shape.dim.add(size=1 << 42)  # 16 TiB of zeros
    with pytest.raises(ServingError) as e:
        tensor_proto_to_ndarray(tp, "images")
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT,
                                               "tensor parsing error: images: not enough memory to decode the tensor")
