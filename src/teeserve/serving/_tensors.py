"""TensorProto <-> numpy, and the TensorFlow ``DataType`` <-> numpy dtype tables.

Strategy: numeric tensors travel as ``tensor_content`` (raw little-endian bytes), which numpy reads
in place (:func:`numpy.frombuffer`, no copy) and writes with one ``tobytes()``. Every form a client
may send is accepted, as TensorFlow's ``Tensor::FromProto`` does: ``tensor_content``, the typed
``*_val`` fields, and a short ``*_val`` list that is filled up to the shape with its last value (so
one value broadcasts to the whole tensor); an empty ``*_val`` list gives zeros. Strings are object
arrays of ``bytes``. Errors are :class:`ServingError` INVALID_ARGUMENT naming the tensor alias.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from .._proto import pb
from ._types import Code, ServingError

__all__ = [
    "DT",
    "DTYPE_TO_NUMPY",
    "NUMPY_TO_DTYPE",
    "dtype_name",
    "numpy_dtype",
    "tf_dtype",
    "tensor_proto_to_ndarray",
    "ndarray_to_tensor_proto",
]


class DT:
    """``tensorflow.DataType`` enum values (tensorflow/core/framework/types.proto)."""

    INVALID = 0
    FLOAT = 1
    DOUBLE = 2
    INT32 = 3
    UINT8 = 4
    INT16 = 5
    INT8 = 6
    STRING = 7
    COMPLEX64 = 8
    INT64 = 9
    BOOL = 10
    BFLOAT16 = 14
    UINT16 = 17
    COMPLEX128 = 18
    HALF = 19
    UINT32 = 22
    UINT64 = 23


#: DataType -> numpy dtype (DT_STRING is an object array of bytes).
DTYPE_TO_NUMPY: dict[int, np.dtype[Any]] = {
    DT.FLOAT: np.dtype(np.float32),
    DT.DOUBLE: np.dtype(np.float64),
    DT.INT32: np.dtype(np.int32),
    DT.UINT8: np.dtype(np.uint8),
    DT.INT16: np.dtype(np.int16),
    DT.INT8: np.dtype(np.int8),
    DT.STRING: np.dtype(object),
    DT.COMPLEX64: np.dtype(np.complex64),
    DT.INT64: np.dtype(np.int64),
    DT.BOOL: np.dtype(np.bool_),
    DT.UINT16: np.dtype(np.uint16),
    DT.COMPLEX128: np.dtype(np.complex128),
    DT.HALF: np.dtype(np.float16),
    DT.UINT32: np.dtype(np.uint32),
    DT.UINT64: np.dtype(np.uint64),
}

#: numpy dtype -> DataType (bytes/str arrays map to DT_STRING).
NUMPY_TO_DTYPE: dict[np.dtype[Any], int] = {v: k for k, v in DTYPE_TO_NUMPY.items()}

# The lowercase names TensorFlow prints in its messages ("float", "int32", "string", ...).
_NAMES = {
    DT.FLOAT: "float", DT.DOUBLE: "double", DT.INT32: "int32", DT.UINT8: "uint8", DT.INT16: "int16",
    DT.INT8: "int8", DT.STRING: "string", DT.COMPLEX64: "complex64", DT.INT64: "int64", DT.BOOL: "bool",
    DT.BFLOAT16: "bfloat16", DT.UINT16: "uint16", DT.COMPLEX128: "complex128", DT.HALF: "half",
    DT.UINT32: "uint32", DT.UINT64: "uint64",
}

# Which typed repeated field holds the values of each dtype (tensor.proto).
_VAL_FIELD = {
    DT.FLOAT: "float_val", DT.DOUBLE: "double_val", DT.INT32: "int_val", DT.UINT8: "int_val",
    DT.INT16: "int_val", DT.INT8: "int_val", DT.UINT16: "int_val", DT.INT64: "int64_val",
    DT.BOOL: "bool_val", DT.STRING: "string_val", DT.COMPLEX64: "scomplex_val",
    DT.COMPLEX128: "dcomplex_val", DT.HALF: "half_val", DT.UINT32: "uint32_val", DT.UINT64: "uint64_val",
}

_LITTLE = sys.byteorder == "little"


def dtype_name(dtype: int) -> str:
    return _NAMES.get(dtype, f"DataType({dtype})")


def numpy_dtype(dtype: int) -> np.dtype[Any]:
    """The numpy dtype of a DataType; ServingError INVALID_ARGUMENT if there is none."""
    try:
        return DTYPE_TO_NUMPY[dtype]
    except KeyError:
        raise ServingError(Code.INVALID_ARGUMENT, f"unsupported tensor dtype {dtype_name(dtype)}") from None


def tf_dtype(arr_dtype: np.dtype[Any]) -> int:
    """The DataType of a numpy dtype (``U``/``S``/object arrays are DT_STRING)."""
    found = NUMPY_TO_DTYPE.get(arr_dtype)  # native byte order: the common case, one lookup
    if found is not None:
        return found
    if arr_dtype.kind in ("U", "S", "O"):
        return DT.STRING
    try:
        return NUMPY_TO_DTYPE[arr_dtype.newbyteorder("=")]
    except KeyError:
        raise ServingError(Code.INVALID_ARGUMENT, f"unsupported numpy dtype {arr_dtype}") from None


#: The largest tensor a request may decode to (2 GiB - 1, gRPC's largest message). A TensorProto fills
#: its shape by repeating its last value (or with zeros), so a request of a few bytes can declare any
#: size: without a limit it would make the server allocate that much.
MAX_TENSOR_BYTES = 2**31 - 1


def _bad(alias: str, why: str) -> ServingError:
    where = f"tensor parsing error: {alias}: " if alias else "tensor parsing error: "
    return ServingError(Code.INVALID_ARGUMENT, where + why)


def tensor_proto_to_ndarray(tp: Any, alias: str = "") -> np.ndarray:
    """Decode a ``tensorflow.TensorProto`` (ours or the official class: only fields are read).

    Numeric ``tensor_content`` is wrapped without a copy (the array is read-only and keeps the
    proto's bytes alive). Raises ServingError INVALID_ARGUMENT for an unknown dtype, an unknown rank,
    negative dimensions, a value count that does not fit the shape, or a tensor larger than
    :data:`MAX_TENSOR_BYTES` or than the memory left.
    """
    try:
        return _decode(tp, alias)
    except MemoryError:
        raise _bad(alias, "not enough memory to decode the tensor") from None


def _decode(tp: Any, alias: str) -> np.ndarray:
    dtype = tp.dtype
    npd = DTYPE_TO_NUMPY.get(dtype)
    if npd is None:
        raise _bad(alias, f"unsupported dtype {dtype_name(dtype)}")
    tensor_shape = tp.tensor_shape
    if tensor_shape.unknown_rank:
        raise _bad(alias, "tensor shape has unknown rank")
    shape = tuple([d.size for d in tensor_shape.dim])
    if shape and min(shape) < 0:
        raise _bad(alias, f"negative dimension in shape {list(shape)}")
    n = math.prod(shape)
    nbytes = n * npd.itemsize
    if nbytes > MAX_TENSOR_BYTES:  # a few values may stand for a tensor of any size
        raise _bad(alias, f"shape {list(shape)} of {dtype_name(dtype)} needs {nbytes} bytes, "
                          f"more than the limit of {MAX_TENSOR_BYTES}")
    content = tp.tensor_content
    if content and dtype != DT.STRING:
        if len(content) != nbytes:
            raise _bad(alias, f"tensor_content has {len(content)} bytes but shape {list(shape)} of "
                              f"{dtype_name(dtype)} needs {nbytes}")
        arr = np.frombuffer(content, dtype=npd if _LITTLE else npd.newbyteorder("<"))
        return arr.reshape(shape)
    vals = getattr(tp, _VAL_FIELD[dtype])
    count = len(vals)
    if dtype in (DT.COMPLEX64, DT.COMPLEX128):
        if count % 2:
            raise _bad(alias, "complex values must come in (real, imaginary) pairs")
        count //= 2
    if count > n:
        raise _bad(alias, f"{count} values do not fit shape {list(shape)}")
    if dtype == DT.STRING:
        out = np.empty(n, dtype=object)
        if count:
            out[:count] = list(vals)
            out[count:] = vals[-1]
        else:
            out[:] = b""
        return out.reshape(shape)
    if count == 0:
        return np.zeros(shape, dtype=npd)
    if dtype == DT.HALF:
        src = np.asarray(vals, dtype=np.uint16).view(np.float16)
    elif dtype in (DT.COMPLEX64, DT.COMPLEX128):
        flat = np.asarray(vals, dtype=np.float32 if dtype == DT.COMPLEX64 else np.float64)
        src = flat.view(npd)
    elif _VAL_FIELD[dtype] == "int_val" and dtype != DT.INT32:
        # int_val holds int32 values; TensorFlow narrows them with a C cast (300 -> 44 for uint8).
        src = np.asarray(vals, dtype=np.int32).astype(npd)
    else:
        src = np.asarray(vals, dtype=npd)
    if count == n:
        return src.reshape(shape)
    out = np.empty(n, dtype=npd)
    out[:count] = src
    out[count:] = src[-1]
    return out.reshape(shape)


def ndarray_to_tensor_proto(arr: Any, dtype: int | None = None) -> Any:
    """Encode an array as a vendored ``tensorflow.TensorProto``.

    Numeric arrays go into ``tensor_content`` (one copy, in little-endian order); string arrays
    (object of bytes/str, ``S`` or ``U``) into ``string_val``, with ``str`` encoded as UTF-8.
    ``dtype`` forces a DataType (the array is cast to it if needed).
    """
    a = np.asarray(arr)
    dt = tf_dtype(a.dtype) if dtype is None else dtype
    tp = pb.TensorProto()
    tp.dtype = dt
    dims = tp.tensor_shape.dim
    for d in a.shape:
        dims.add(size=int(d))
    if dt == DT.STRING:
        tp.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in a.reshape(-1))
        return tp
    npd = numpy_dtype(dt)
    if a.dtype != npd:
        a = a.astype(npd)
    if not _LITTLE:
        a = a.astype(npd.newbyteorder("<"))
    tp.tensor_content = a.tobytes()
    return tp
