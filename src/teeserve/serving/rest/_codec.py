"""TensorFlow Serving's REST JSON formats, as pure functions over bytes, numpy arrays and protos.

Strategy (sans-IO, like h11): nothing here touches a socket, a thread or the serving core. The HTTP
shell (``_server.py``) and the request handler (``_handler.py``) call these functions; tests call them
directly. Every failure is a :class:`ServingError` (INVALID_ARGUMENT unless noted) carrying
TensorFlow Serving's message (tf-serving-api.md §2.2, §2.3, §9) — with one deliberate difference:
where TF Serving echoes the offending JSON value or the whole request document into the message,
teeserve names the value's JSON *type* instead, so that tensor contents never reach error bodies or
logs.

Predict decoding is split in two steps because the signature's input dtypes are needed to convert
values and come from the core: :func:`parse_predict` (JSON → document + signature name) and
:func:`predict_inputs` (document + input specs → numpy arrays).

Speed: a request is parsed by orjson; a document orjson refuses (the non-standard ``NaN``, ``Infinity``
and ``-Infinity`` tokens, lone surrogates, malformed JSON) or one with an integer too long for 64 bits
(orjson would read it as a float) goes to the stdlib's C scanner, which accepts the tokens and words the
errors; a number literal beyond the double range (``1e400``) is refused there with rapidjson's
"Number too big to be stored in double." and its offset, as TF Serving does, rather than read as
Infinity. rapidjson's other tokens (``Inf``, ``-Inf``, ``-NaN``: kParseNanAndInfFlag) are rewritten for
the stdlib only when it stops at one, and a ``\\u`` escape of a lone surrogate, which the stdlib
accepts, is refused with rapidjson's "The surrogate pair in string is invalid." (checked only on the
stdlib path: orjson refuses them itself). Error offsets are byte offsets, as rapidjson's. Response
bodies are always valid UTF-8 (a lone surrogate from elsewhere is written as U+FFFD).
Each numeric tensor is converted in a few numpy passes over the nested lists (an object array, the
set of its leaf types, one cast). Only when that fast path cannot prove the value well-formed (ragged
lists, wrong leaf types, out-of-range values) or the tensor holds strings does a per-leaf walk run,
which also produces TF Serving's exact error message. Measured
here: a 1x224x224x3 float request (3.2 MB of JSON) parses in ~0.1 s, almost all of it in the JSON
scanner.
Floats are written in their shortest round-trip form for their own precision (a float32 ``0.2`` is
written ``0.2``, not ``0.20000000298023224``), whole numbers with a trailing ``.0``, and non-finite
values as ``NaN``/``Infinity``/``-Infinity``, as TF Serving does. Numeric and boolean outputs with no
non-finite value are written by orjson straight from the numpy arrays (its float32 form is the
shortest that reads back as the same float32, e.g. ``3.4671703e-9``); the rest by the stdlib encoder.
Each reads back as the exact value; only the text can differ from TF Serving's ``%.9g`` (and a double
may read ``1e-5`` where the stdlib wrote ``1e-05``). orjson reads documents nested up to 1023 levels,
where the stdlib gave up somewhat earlier; tensors themselves are limited to rank 32 either way.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .._types import Code, ServingError, Signature, TensorSpec, VersionStatus

__all__ = [
    "RequestFormat",
    "DT_NAMES",
    "parse_json",
    "parse_predict",
    "predict_inputs",
    "encode_predict_response",
    "parse_classify_regress",
    "encode_classification_result",
    "encode_regression_result",
    "encode_model_status",
    "encode_model_metadata",
    "encode_error",
    "encode_json",
]


class RequestFormat(enum.Enum):
    """Which predict request layout was used; the response uses the matching one."""

    ROW = "instances"  # response key "predictions"
    COLUMNAR = "inputs"  # response key "outputs"


# TensorFlow DataType enum values (tensorflow/core/framework/types.proto) -> TF's short name.
DT_NAMES: dict[int, str] = {
    1: "float",
    2: "double",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "half",
    20: "resource",
    21: "variant",
    22: "uint32",
    23: "uint64",
}
_DT_FLOAT, _DT_DOUBLE, _DT_STRING, _DT_BOOL, _DT_HALF = 1, 2, 7, 10, 19

# dtypes accepted from JSON numbers: DataType -> numpy dtype. TF Serving converts float, double and
# the integer types; half and uint16 are teeserve extensions (ONNX models use them).
_NUMERIC: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.float64),
    3: np.dtype(np.int32),
    4: np.dtype(np.uint8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int8),
    9: np.dtype(np.int64),
    17: np.dtype(np.uint16),
    19: np.dtype(np.float16),
    22: np.dtype(np.uint32),
    23: np.dtype(np.uint64),
}
# Largest integer each float type holds exactly (TF's IsLosslessDecimal).
_FLOAT_EXACT_INT = {_DT_FLOAT: 2**24 - 1, _DT_DOUBLE: 2**53 - 1, _DT_HALF: 2**11 - 1}
# Largest finite value of the narrower float types.
_FLOAT_MAX = {_DT_FLOAT: float(np.finfo(np.float32).max), _DT_HALF: float(np.finfo(np.float16).max)}
_MAX_RANK = 32  # numpy supports 64 dimensions; no model has more than a handful

_BYTES_SUFFIX = "_bytes"
_B64 = "b64"


def _bad(message: str, code: Code = Code.INVALID_ARGUMENT) -> ServingError:
    return ServingError(code, message)


def _dt_name(dtype: int) -> str:
    return DT_NAMES.get(dtype, f"DataType({dtype})")


def _json_type(value: Any) -> str:
    """rapidjson's type names, which TF Serving uses in its messages."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# --------------------------------------------------------------------------------------------------
# JSON document
# --------------------------------------------------------------------------------------------------


def parse_json(body: bytes) -> dict[str, Any]:
    """Parse a request body into a JSON object, with TF Serving's ``JSON Parse error`` messages."""
    if not body or body.isspace():
        raise _bad("JSON Parse error: The document is empty")
    try:
        doc = _loads(body)
    except json.JSONDecodeError as exc:
        raise _bad(f"JSON Parse error: {exc.msg} at offset: {_byte_offset(exc.doc, exc.pos)}") from None
    except UnicodeDecodeError as exc:  # before ValueError, of which it is a subclass
        raise _bad(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from None
    except _BadSurrogate as exc:
        raise _bad("JSON Parse error: The surrogate pair in string is invalid. at offset: "
                   f"{exc.offset}") from None
    except _NumberTooBig:
        raise _bad(f"JSON Parse error: Number too big to be stored in double. at offset: "
                   f"{_too_big_offset(body)}") from None
    except ValueError:  # an integer longer than Python converts (4300 digits): rapidjson's words
        raise _bad(f"JSON Parse error: Number too big to be stored in double. at offset: "
                   f"{_too_big_offset(body)}") from None
    except RecursionError:
        raise _bad("JSON Parse error: The document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise _bad(f"JSON Value: ({_json_type(doc)}) Is not object")
    return doc


# orjson reads an integer literal beyond 64 bits as a float; the stdlib keeps it an int, which the dtype
# checks need (an int64 input must say "out of range", not "got float"). A body with 19 digits in a row,
# other than right after a decimal point, goes to the stdlib.
_DIGIT_TO_D = bytes.maketrans(b"0123456789", b"d" * 10)
_LONG_RUN = b"d" * 19
_NOT_D = re.compile(rb"[^d]")


def _maybe_long_int(body: bytes) -> bool:
    """Whether ``body`` may hold an integer literal too long for 64 bits (a 19-digit run outside a
    fraction); found with C-speed scans, since a regex with a repeat count is slow on float-heavy JSON."""
    t = body.translate(_DIGIT_TO_D)
    i = t.find(_LONG_RUN)
    while i >= 0:
        if i == 0 or t[i - 1] != 0x2E:  # not after "."
            return True
        end = _NOT_D.search(t, i)
        if end is None:
            return False
        i = t.find(_LONG_RUN, end.start())
    return False


def _loads(body: bytes) -> Any:
    """orjson when it reads the document exactly as the stdlib would, else the stdlib."""
    if not _maybe_long_int(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # NaN/Infinity, a lone surrogate or an error: the stdlib accepts or words it
    text = body.decode("utf-8")  # UTF-8 only, as TF Serving (rapidjson)
    escapes = b"\\u" in body  # (C-speed) only then can a lone surrogate be escaped
    try:
        doc = _stdlib_loads(text, body)
    except json.JSONDecodeError as exc:
        # rapidjson stops at whichever comes first: the syntax error or a lone surrogate before it
        bad = _lone_surrogate(body) if escapes else None
        if bad is not None and bad < _byte_offset(text, exc.pos):
            raise _BadSurrogate(bad) from None
        raise
    if escapes:
        bad = _lone_surrogate(body)
        if bad is not None:
            raise _BadSurrogate(bad)
    return doc


def _stdlib_loads(text: str, body: bytes) -> Any:
    loads = json.loads
    if _may_overflow_double(body):
        loads = _checked_loads
    try:
        return loads(text)
    except json.JSONDecodeError as exc:
        if not _RJ_ONLY_TOKEN.match(text, exc.pos):
            raise
    # rapidjson's Inf / -Inf / -NaN, which the stdlib does not know: rewrite them as its tokens, and
    # report any later error at its offset in the original text.
    shifts: list[tuple[int, int]] = []  # (end of a rewritten token in the new text, growth up to there)
    growth = 0

    def swap(m: re.Match[str]) -> str:
        nonlocal growth
        token = m.group()
        if token[0] == '"':
            return token
        new = _RJ_TOKENS[token]
        if len(new) != len(token):
            growth += len(new) - len(token)
            shifts.append((m.end() + growth, growth))
        return new

    try:
        return loads(_RJ_TOKEN.sub(swap, text))
    except json.JSONDecodeError as exc:
        grown = 0
        for end, total in shifts:
            if end > exc.pos:
                break
            grown = total
        raise json.JSONDecodeError(exc.msg, text, max(exc.pos - grown, 0)) from None


def _checked_loads(text: str) -> Any:
    return json.loads(text, parse_float=_finite_float, parse_int=_double_sized_int)


# kParseNanAndInfFlag: rapidjson reads NaN, Inf and Infinity, each with an optional minus; the stdlib
# only NaN, Infinity and -Infinity. Strings are matched (and kept) so that their text is left alone.
_RJ_TOKENS = {"Inf": "Infinity", "-Inf": "-Infinity", "-NaN": "NaN", "Infinity": "Infinity",
              "-Infinity": "-Infinity"}
_RJ_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?Inf(?:inity)?|-NaN')
_RJ_ONLY_TOKEN = re.compile(r"-?Inf|-NaN")


def _byte_offset(text: str, pos: int) -> int:
    """The UTF-8 byte offset of character ``pos`` of ``text`` (rapidjson reports byte offsets)."""
    return pos if text.isascii() else len(text[:pos].encode("utf-8", "surrogatepass"))


class _BadSurrogate(ValueError):
    """A ``\\u`` escape of a lone surrogate: rapidjson's kParseErrorStringUnicodeSurrogateInvalid."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_surrogate(body: bytes) -> int | None:
    """Byte offset of the first ``\\u`` escape of a surrogate that is not the high half of a pair
    followed at once by the low half (where rapidjson stops), or ``None``."""
    paired_low = -1
    for m in _SURROGATE_ESCAPE.finditer(body):
        i = m.start()
        if i == paired_low:
            continue
        j = i
        while j and body[j - 1] == 0x5C:
            j -= 1
        if (i - j) % 2:
            continue  # an escaped backslash followed by the text "ud800..."
        if body[i + 3] in b"89abAB" and _LOW_SURROGATE_ESCAPE.match(body, i + 6):
            paired_low = i + 6  # a high surrogate with its low half right after
            continue
        return i
    return None


_DIGIT_TO_D_E = bytes.maketrans(b"0123456789E", b"d" * 10 + b"e")


def _may_overflow_double(body: bytes) -> bool:
    """Whether ``body`` may hold a number literal beyond the double range: a positive exponent of three
    digits or more, or a run of 309 digits. Only then do the (Python-speed) overflow checks run; the
    test is C-speed scans (a regex takes most of a parse's time on a float-heavy body)."""
    t = body.translate(_DIGIT_TO_D_E)
    return t.find(b"deddd") >= 0 or t.find(b"de+ddd") >= 0 or t.find(b"d" * _DOUBLE_MAX_DIGITS) >= 0


class _NumberTooBig(ValueError):
    """A number literal beyond the double range (``1e400``): rapidjson refuses it, so TF Serving does."""


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig
    return value


_DOUBLE_MAX_DIGITS = 309  # 1.8e308 has 309 digits before the point


def _double_sized_int(text: str) -> int:
    value = int(text)
    if len(text) >= _DOUBLE_MAX_DIGITS:
        try:
            float(value)  # rounds as rapidjson's double does: just above DBL_MAX may still fit
        except OverflowError:
            raise _NumberTooBig from None
    return value


# Strings (skipped whole) and number literals, in document order: the first literal beyond the double
# range is where rapidjson stops, and its start is the offset TF Serving reports.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')


def _too_big_offset(body: bytes) -> int:
    """Byte offset of the first number literal in ``body`` that does not fit a double (0 if none)."""
    for m in _TOKEN.finditer(body):
        tok = m.group()
        if tok.startswith(b'"'):
            continue
        try:
            if math.isinf(float(tok)):
                return m.start()
        except (OverflowError, ValueError):  # ValueError: an integer of over 4300 digits
            return m.start()
    return 0


def _signature_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _bad("JSON Value not formatted correctly. 'signature_name' key must be a string value.")
    return name


def parse_predict(body: bytes) -> tuple[dict[str, Any], str]:
    """First step of predict decoding: the JSON document and its (possibly empty) signature name."""
    doc = parse_json(body)
    return doc, _signature_name(doc)


# --------------------------------------------------------------------------------------------------
# JSON values -> numpy arrays
# --------------------------------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str)


def _b64decode(text: str) -> bytes:
    try:
        data = text.encode("ascii")
        data += b"=" * (-len(data) % 4)  # TF (absl) accepts unpadded base64
        return base64.b64decode(data, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _bad("Unable to base64 decode") from None


def _type_error(value: Any, dtype: int) -> ServingError:
    return _bad(f"JSON Value: ({_json_type(value)}) Type: {_json_type(value)} is not of expected type: "
                f"{_dt_name(dtype)}")


def _lossy(value: Any, target: str) -> ServingError:
    return _bad(f"Cannot convert JSON value: ({_json_type(value)}) to {target} without loss of precision.")


def _leaf_converter(dtype: int):  # type: ignore[no-untyped-def]
    """A function that checks one JSON leaf for ``dtype`` and returns the Python value to store."""
    if dtype == _DT_STRING:

        def conv(v: Any) -> bytes:
            if isinstance(v, str):
                return v.encode("utf-8", "surrogatepass")
            if isinstance(v, dict):
                if not _is_b64(v):
                    raise _bad("JSON Value: (Object) not formatted correctly for base64 data")
                return _b64decode(v[_B64])
            raise _type_error(v, dtype)

        return conv
    if dtype == _DT_BOOL:

        def conv_bool(v: Any) -> bool:
            if v is True or v is False:
                return v
            raise _type_error(v, dtype)

        return conv_bool
    np_dtype = _NUMERIC.get(dtype)
    if np_dtype is None:
        raise _bad(f"Conversion of JSON Value to type: {_dt_name(dtype)} is not supported", Code.UNIMPLEMENTED)
    if np_dtype.kind == "f":
        limit = _FLOAT_EXACT_INT[dtype]
        fmax = float(np.finfo(np_dtype).max)
        target = _dt_name(dtype)

        def conv_float(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _type_error(v, dtype)
            if isinstance(v, int):
                if abs(v) > limit:
                    raise _lossy(v, target)
                return float(v)
            if math.isfinite(v) and abs(v) > fmax:
                raise _lossy(v, target)
            return v

        return conv_float
    info = np.iinfo(np_dtype)
    lo, hi = int(info.min), int(info.max)

    def conv_int(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _type_error(v, dtype)
        return v

    return conv_int


def _dense_shape(value: Any) -> list[int]:
    """The shape implied by the first element at each level (TF's GetDenseTensorShape)."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], conv: Any, out: list[Any]) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise _bad(f"JSON Value: ({_json_type(value)}) found at incorrect level: {level + 1} in the JSON "
                       f"DOM. Expected at level: {rank}")
        out.append(conv(value))
        return
    if level >= rank:
        raise _bad(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _bad(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                   f"{shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, conv, out)


def _walk(value: Any, dtype: int) -> tuple[list[Any], list[int]]:
    """Check ``value`` leaf by leaf (TF's FillTensorProto); return the flat values and the shape."""
    conv = _leaf_converter(dtype)
    shape = _dense_shape(value)
    if len(shape) > _MAX_RANK:
        raise _bad(f"Tensor rank {len(shape)} exceeds the maximum supported rank {_MAX_RANK}")
    flat: list[Any] = []
    _fill(value, 0, shape, conv, flat)
    return flat, shape


def _from_flat(flat: list[Any], shape: list[int], dtype: int) -> np.ndarray:
    if dtype == _DT_STRING:
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    np_dtype = np.dtype(np.bool_) if dtype == _DT_BOOL else _NUMERIC[dtype]
    return np.array(flat, dtype=np_dtype).reshape(shape)


def _fast_array(value: Any, dtype: int) -> np.ndarray | None:
    """Convert a well-formed numeric or boolean tensor in a few numpy passes; ``None`` when the value
    is not one (ragged, wrong leaf types, out of range), so that :func:`_walk` finds TF's error.

    The nested lists become an object array first (its shape is the tensor's; references only, so a
    long string among the leaves costs nothing, unlike numpy's own type inference, which would size a
    fixed-width unicode array by the longest string), then the set of leaf types decides.
    """
    if dtype == _DT_STRING:
        return None
    try:
        obj = np.array(value, dtype=object)
    except (ValueError, TypeError, RecursionError):
        return None
    if obj.ndim > _MAX_RANK:
        return None
    kinds = set(map(type, obj.ravel().tolist()))
    try:
        if dtype == _DT_BOOL:
            return obj.astype(np.bool_) if kinds <= {bool} else None
        np_dtype = _NUMERIC.get(dtype)
        if np_dtype is None or not kinds <= {int, float}:
            return None
        if np_dtype.kind == "f":
            f64 = obj.astype(np.float64)
            if np_dtype.itemsize == 8 and int not in kinds:
                return f64  # double from doubles: nothing to check
            if not f64.size:
                return f64.astype(np_dtype)
            mag = np.abs(f64)
            biggest = float(mag.max())
            if biggest != biggest:  # a NaN: the largest of the other values decides
                biggest = float(np.fmax.reduce(mag))  # NaN only if every value is NaN
                if biggest != biggest:
                    biggest = 0.0
            if int in kinds and biggest > _FLOAT_EXACT_INT[dtype]:
                return None  # maybe an integer that the float type cannot hold exactly
            if np_dtype.itemsize == 8 or biggest <= _FLOAT_MAX[dtype]:
                return f64.astype(np_dtype)  # finite and in range: the cast cannot overflow
            if bool(np.any(np.isfinite(f64) & (mag > _FLOAT_MAX[dtype]))):  # biggest is above the max here
                return None  # out of range (infinities are fine)
            with np.errstate(over="ignore"):  # a value within max that rounds up to inf: as TF's cast
                return f64.astype(np_dtype)
        if float in kinds:
            return None
        ints = obj.astype(np.uint64 if np_dtype == np.uint64 else np.int64)
        if ints.size and np_dtype.itemsize < 8:
            info = np.iinfo(np_dtype)
            if int(ints.min()) < int(info.min) or int(ints.max()) > int(info.max):
                return None
        return ints.astype(np_dtype, copy=False)
    except (OverflowError, ValueError, TypeError):
        return None


def _to_array(value: Any, dtype: int) -> np.ndarray:
    """Convert one JSON tensor value to a numpy array of ``dtype``, or raise TF's error."""
    arr = _fast_array(value, dtype)
    if arr is not None:
        return arr
    flat, shape = _walk(value, dtype)
    return _from_flat(flat, shape, dtype)


def _shape_str(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _wrap(status: ServingError) -> str:
    return f"{status.code.name}: {status.message}"


def _rows_to_array(items: list[Any], dtype: int, what: str) -> np.ndarray:
    """Batch the values of one input across all instances (TF's AddInstanceItem checks)."""
    arr = _fast_array(items, dtype)
    if arr is not None:
        return arr
    conv = _leaf_converter(dtype)
    flat: list[Any] = []
    first_shape: list[int] | None = None
    first_size = 0
    for i, item in enumerate(items):
        shape = _dense_shape(item)
        before = len(flat)
        try:
            if len(shape) > _MAX_RANK:
                raise _bad(f"Tensor rank {len(shape)} exceeds the maximum supported rank {_MAX_RANK}")
            _fill(item, 0, shape, conv, flat)
            size = len(flat) - before
            if first_shape is None:
                first_shape, first_size = shape, size
            elif size != first_size:
                raise _bad(f"Expecting tensor size: {first_size} but got: {size}")
            elif shape != first_shape:
                raise _bad(f"Expecting shape {_shape_str(first_shape)} but got: {_shape_str(shape)}")
        except ServingError as exc:
            if exc.code != Code.INVALID_ARGUMENT:
                raise
            raise _bad(f"Failed to process element: {i}{what} of 'instances' list. Error: {_wrap(exc)}") from None
    return _from_flat(flat, [len(items), *(first_shape or [])], dtype)


def predict_inputs(
    doc: Mapping[str, Any], inputs: Mapping[str, TensorSpec]
) -> tuple[RequestFormat, dict[str, np.ndarray]]:
    """Second step of predict decoding: the request's tensors, converted to the signature's dtypes.

    ``inputs`` is the signature's input map (alias -> spec). Returns the request format (row or
    columnar, which selects the response layout) and alias -> array.
    """
    if not inputs:
        raise _bad("Failed to get input map for signature")
    names = sorted(inputs)
    has_instances = "instances" in doc
    has_inputs = "inputs" in doc
    if has_instances and has_inputs:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _bad("Excepting 'instances' to be an list/array")
        if not instances:
            raise _bad("No values in 'instances' array")
        return RequestFormat.ROW, _row_inputs(instances, inputs, names)
    if has_inputs:
        return RequestFormat.COLUMNAR, _columnar_inputs(doc["inputs"], inputs, names)
    raise _bad("Missing 'inputs' or 'instances' key")


def _row_inputs(instances: list[Any], specs: Mapping[str, TensorSpec], names: list[str]) -> dict[str, np.ndarray]:
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise _bad("instances is a plain list, but expecting list of objects as multiple input tensors "
                   "required as per tensorinfo_map")
    if not _element_object(first):
        for i, elem in enumerate(instances):
            if _element_object(elem):
                raise _bad(f"Expecting value/list but got object at item {i} of input list")
        name = names[0]
        return {name: _rows_to_array(instances, specs[name].dtype, "")}
    wanted = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, elem in enumerate(instances):
        if not _element_object(elem):
            raise _bad(f"Expecting object but got list at item {i} of input list")
        for key, value in elem.items():
            if key not in wanted:
                raise _bad(f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                           f"INVALID_ARGUMENT: JSON object: does not have named input: {key}")
            columns[key].append(value)
        if len(elem) != len(wanted):
            raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object: (Object) keys must "
                       f"be equal to: {','.join(names)}")
    return {name: _rows_to_array(columns[name], specs[name].dtype, f" key: {name}") for name in names}


def _columnar_inputs(value: Any, specs: Mapping[str, TensorSpec], names: list[str]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(names) > 1:
            raise _bad("inputs is a plain value/list, but expecting an object as multiple input tensors "
                       "required as per tensorinfo_map")
        name = names[0]
        return {name: _to_array(value, specs[name].dtype)}
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name not in value:
            raise _bad(f"Missing named input: {name} in 'inputs' object.")
        out[name] = _to_array(value[name], specs[name].dtype)
    return out


# --------------------------------------------------------------------------------------------------
# numpy arrays -> JSON
# --------------------------------------------------------------------------------------------------


_ENCODER = json.JSONEncoder(allow_nan=True, separators=(",", ":"), ensure_ascii=False)


def encode_json(obj: Any) -> bytes:
    """Compact JSON with the ``NaN``/``Infinity`` tokens TF Serving emits; always valid UTF-8."""
    text = _ENCODER.encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (from a model's output, say): U+FFFD in its place
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


_SURROGATE = re.compile("[\ud800-\udfff]")


_SMALL = 256


def _short_floats_small(x: np.ndarray) -> np.ndarray:
    """:func:`_short_floats` for small tensors: a Python loop beats a dozen numpy passes there."""
    flat = x.reshape(-1)
    values = flat.astype(np.float64).tolist()
    # "%.6g" of a finite float32 never rounds above float32's largest value, so the cast cannot overflow
    out = np.array([float("%.6g" % v) for v in values], dtype=np.float64)
    bad = np.nonzero((out.astype(np.float32) != flat) & (flat == flat))[0]
    for i in bad.tolist():
        out[i] = float("%.9g" % values[i])
    return out.reshape(x.shape)


def _short_floats(arr: np.ndarray) -> np.ndarray:
    """float64 values whose ``repr`` is the short decimal form of each float32/float16 element.

    TF Serving writes a float32 with 6 significant digits when that reads back to the same float32,
    else with full precision. Here each element becomes the double nearest to its rounding to
    6, 7, 8 or 9 significant digits, the first that reads back as the same value, so
    Python's ``repr`` (shortest round-trip for the double) prints exactly those digits: ``0.2`` rather
    than ``0.20000000298023224``. Vectorised: a few numpy passes instead of a Python loop per element.
    """
    x = np.asarray(arr)
    if x.dtype.itemsize < 4:
        x = x.astype(np.float32)  # as TF Serving, which writes half values as floats
    if x.size <= _SMALL:
        return _short_floats_small(x)
    flat = x.reshape(-1)
    out = flat.astype(np.float64)
    with np.errstate(all="ignore"):
        e_all = np.floor(np.log10(np.abs(out)))
    # powers of ten up to 1e22 are exact doubles: keep n = k - 1 - e within [-22, 22] for k in 6..9
    in_range = np.isfinite(out) & (out != 0) & (e_all >= -14) & (e_all <= 27)
    rest = np.nonzero(np.isfinite(out) & (out != 0) & ~in_range)[0]
    if rest.size:
        out[rest] = _short_floats_small(flat[rest].astype(np.float32))
    idx = np.nonzero(in_range)[0]
    if idx.size:
        v = out[idx]
        target = flat[idx]
        e = e_all[idx].astype(np.int64)
        with np.errstate(all="ignore"):
            for k in (6, 7, 8, 9):
                n = (k - 1) - e
                m = np.rint(v * 10.0**n)
                # m / 10**n and m * 10**-n are correctly rounded while the power of ten is exact
                cand = np.where(n >= 0, m / 10.0 ** np.maximum(n, 0), m * 10.0 ** np.maximum(-n, 0))
                ok = cand.astype(x.dtype) == target
                if ok.any():
                    out[idx[ok]] = cand[ok]
                    keep = ~ok
                    idx, v, target, e = idx[keep], v[keep], target[keep], e[keep]
                    if not idx.size:
                        break
        if idx.size:  # e estimated one too high or low at a power of ten: format these one by one
            out[idx] = _short_floats_small(target.astype(np.float32))
    return out.reshape(x.shape)


def _string_leaf(value: Any, as_b64: bool) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    elif not isinstance(value, (bytes, bytearray)):
        value = str(value).encode("utf-8")
    if as_b64:
        return {_B64: base64.b64encode(value).decode("ascii")}
    return value.decode("utf-8", "replace")


def _json_values(arr: np.ndarray, name: str) -> Any:
    """A nested-list (or scalar) JSON value for one output tensor."""
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype.itemsize < 8:
            # Shortest round-trip text for the tensor's own precision, read back as a double: json then
            # prints it with the same digits ("0.2", not "0.20000000298023224").
            return _short_floats(arr).tolist()
        return arr.tolist()
    if kind in "iub":
        return arr.tolist()
    if kind in "OSU":
        as_b64 = name.endswith(_BYTES_SUFFIX)
        flat = [_string_leaf(v, as_b64) for v in arr.reshape(-1).tolist()]
        if arr.ndim == 0:
            return flat[0]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape).tolist()
    raise _bad(f"Failed to write JSON value for tensor type: {arr.dtype}")


# dtype -> the dtype orjson is given instead: native byte order, int64 rather than the longlong that
# ONNX Runtime returns (orjson knows only the first), float32 for half (as TF Serving writes it); None
# for what the stdlib path writes (strings, complex, long double).
_ORJSON_DTYPES: dict[np.dtype[Any], np.dtype[Any] | None] = {}


def _orjson_dtype(dt: np.dtype[Any]) -> np.dtype[Any] | None:
    try:
        return _ORJSON_DTYPES[dt]
    except KeyError:
        pass
    kind, size = dt.kind, dt.itemsize
    canon: np.dtype[Any] | None = None
    if kind == "f" and size in (2, 4, 8):
        canon = np.dtype(np.float32) if size == 2 else np.dtype(f"f{size}")
    elif kind == "b":
        canon = np.dtype(np.bool_)
    elif kind in "iu":
        canon = np.dtype(f"{kind}{size}")
    if len(_ORJSON_DTYPES) < 64:
        _ORJSON_DTYPES[dt] = canon
    return canon


def _native(arr: np.ndarray) -> Any:
    """``arr`` in a form orjson writes itself, or ``None`` when the stdlib path must write it."""
    canon = _orjson_dtype(arr.dtype)
    if canon is None:
        return None
    if arr.dtype is not canon:
        arr = arr.view(canon) if arr.dtype == canon else arr.astype(canon)  # longlong: a view
    if arr.ndim == 0:
        return arr[()]  # a numpy scalar (orjson writes no 0-d arrays)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _encode_native(arrays: Mapping[str, np.ndarray], names: list[str], fmt: RequestFormat,
                   batch: int) -> bytes | None:
    """The predict response written by orjson from the arrays themselves (no Python list per value);
    ``None`` when some output needs the stdlib path: strings, or a non-finite float (orjson writes
    ``null`` for those, where TF Serving writes ``NaN``/``Infinity``)."""
    native = {}
    for n in names:
        a = _native(arrays[n])
        if a is None:
            return None
        native[n] = a
    if fmt is RequestFormat.COLUMNAR:
        doc: Any = {"outputs": native[names[0]] if len(names) == 1 else native}
    elif len(names) == 1:
        doc = {"predictions": native[names[0]]}
    else:
        doc = {"predictions": [{n: native[n][i] for n in names} for i in range(batch)]}
    data = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    # orjson writes a NaN or an infinity as null; an output *name* may hold "null" too, so look closer
    # only then (the common case costs one substring search, not a pass over every float output).
    if b"null" in data and not all(a.dtype.kind != "f" or bool(np.isfinite(a).all())
                                   for a in native.values()):
        return None
    return data


def encode_predict_response(outputs: Mapping[str, np.ndarray], fmt: RequestFormat) -> bytes:
    """``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar); one output → name dropped."""
    if not outputs:
        raise _bad("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {n: np.asarray(outputs[n]) for n in names}
    if fmt is RequestFormat.COLUMNAR:
        data = _encode_native(arrays, names, fmt, 0)
        if data is not None:
            return data
        if len(names) == 1:
            return encode_json({"outputs": _json_values(arrays[names[0]], names[0])})
        return encode_json({"outputs": {n: _json_values(arrays[n], n) for n in names}})
    batch = -1
    for n in names:
        a = arrays[n]
        if a.ndim == 0:
            raise _bad(f"Tensor name: {n} has no shape information ")
        if batch >= 0 and a.shape[0] != batch:
            raise _bad(f"Tensor name: {n} has inconsistent batch size: {a.shape[0]} expecting: {batch}")
        batch = a.shape[0]
    data = _encode_native(arrays, names, fmt, batch)
    if data is not None:
        return data
    if len(names) == 1:
        return encode_json({"predictions": _json_values(arrays[names[0]], names[0])})
    columns = {n: _json_values(arrays[n], n) for n in names}
    rows = [{n: columns[n][i] for n in names} for i in range(batch)]
    return encode_json({"predictions": rows})


# --------------------------------------------------------------------------------------------------
# Classify / Regress
# --------------------------------------------------------------------------------------------------


def _add_feature_value(value: Any, name: str, lists: dict[str, list[Any]], kinds: list[str]) -> None:
    def want(kind: str) -> None:
        if kinds and kinds[0] != kind:
            raise _bad(f"Unexpected element type in feature: {name} expecting type: {kinds[0]}")
        if not kinds:
            kinds.append(kind)

    if value is None or isinstance(value, list):
        raise _bad(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if value is True or value is False:
        want("int64")
        lists["int64"].append(1 if value else 0)
    elif isinstance(value, dict):
        if not _is_b64(value):
            raise _bad(f"Feature: {name} has element with unexpected JSON type: Object")
        want("bytes")
        lists["bytes"].append(_b64decode(value[_B64]))
    elif isinstance(value, str):
        want("bytes")
        lists["bytes"].append(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, float):
        want("float")
        if math.isfinite(value) and abs(value) > 3.4028234663852886e38:
            raise _lossy(value, "float")
        lists["float"].append(value)
    else:  # int
        if value > 2**63 - 1 and value <= 2**64 - 1:
            raise _bad(f"Feature: {name} has uint64 element. Only int64 is supported.")
        if not -(2**63) <= value <= 2**63 - 1:
            # rapidjson reads such numbers as doubles
            want("float")
            lists["float"].append(float(value))
            return
        want("int64")
        lists["int64"].append(value)


def _make_example(value: Any, example: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(f"Example must be JSON object but got JSON {_json_type(value)}")
    features = example.features.feature
    for name, content in value.items():
        lists: dict[str, list[Any]] = {"int64": [], "float": [], "bytes": []}
        kinds: list[str] = []
        for item in content if isinstance(content, list) else (content,):
            _add_feature_value(item, name, lists, kinds)
        feature = features[name]
        feature.Clear()
        if kinds:
            kind = kinds[0]
            getattr(feature, f"{kind}_list").value.extend(lists[kind])


def parse_classify_regress(body: bytes, method: str) -> tuple[str, Any]:
    """A classify or regress request body → (signature name, ``tensorflow.serving.Input``).

    ``{"context": {...}, "examples": [{...}, ...]}``: feature values are ints (int64_list, booleans as
    0/1), floats (float_list), strings or ``{"b64": ...}`` (bytes_list), alone or in a list.
    """
    from ..._proto import pb

    doc = parse_json(body)
    signature_name = _signature_name(doc)
    input_proto = pb.Input()
    has_context = "context" in doc
    if has_context:
        _make_example(doc["context"], input_proto.example_list_with_context.context)
    if "examples" not in doc:
        raise _bad(f"When method is {method}, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _bad("Expecting 'examples' value to be an list/array")
    if not examples:
        raise _bad("'examples' value is an empty array")
    target = input_proto.example_list_with_context if has_context else input_proto.example_list
    for value in examples:
        _make_example(value, target.examples.add())
    return signature_name, input_proto


def _float32_text(values: list[float]) -> list[float]:
    return _short_floats(np.asarray(values, dtype=np.float32)).tolist()


def encode_classification_result(result: Any) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` from a ``ClassificationResult``."""
    if not len(result.classifications):
        raise _bad("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        classes = list(classifications.classes)
        scores = _float32_text([c.score for c in classes])
        rows.append([[c.label, s] for c, s in zip(classes, scores)])
    return encode_json({"results": rows})


def encode_regression_result(result: Any) -> bytes:
    """``{"results": [v1, v2, ...]}`` from a ``RegressionResult``."""
    if not len(result.regressions):
        raise _bad("Cannot convert empty RegressionResults to JSON")
    return encode_json({"results": _float32_text([r.value for r in result.regressions])})


# --------------------------------------------------------------------------------------------------
# Status, metadata, errors
# --------------------------------------------------------------------------------------------------


def encode_model_status(statuses: list[VersionStatus]) -> bytes:
    """GetModelStatusResponse JSON as TF Serving prints it (versions as strings, status always present)."""
    from google.protobuf import json_format

    from ..._proto import pb

    response = pb.GetModelStatusResponse()
    for st in statuses:
        item = response.model_version_status.add()
        item.version = st.version
        item.state = int(st.state)
        item.status.error_code = int(st.error_code)
        item.status.error_message = st.error_message
    text = json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1)
    return text.encode("utf-8")


def _tensor_info(spec: TensorSpec, info: Any) -> None:
    info.name = spec.name
    info.dtype = spec.dtype
    if spec.shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        for d in spec.shape:
            info.tensor_shape.dim.add(size=d)


def encode_model_metadata(name: str, version: int, signatures: Mapping[str, Signature]) -> bytes:
    """GetModelMetadata JSON in TF Serving's REST shape:
    ``{"model_spec": {...}, "metadata": {"signature_def": {"signature_def": {...}}}}``.

    TF Serving unpacks the ``Any`` in ``metadata["signature_def"]`` and prints the ``SignatureDefMap``
    itself (so there is no ``@type``), with proto field names and all primitive fields."""
    from google.protobuf import json_format

    from ..._proto import pb

    spec = pb.ModelSpec(name=name, signature_name="")
    spec.version.value = version
    sigmap = pb.SignatureDefMap()
    for sig_name in sorted(signatures):
        sig = signatures[sig_name]
        sd = sigmap.signature_def[sig_name]
        sd.method_name = sig.method_name
        for alias, t in sig.inputs.items():
            _tensor_info(t, sd.inputs[alias])
        for alias, t in sig.outputs.items():
            _tensor_info(t, sd.outputs[alias])
    opts = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    doc = {
        "model_spec": json_format.MessageToDict(spec, **opts),
        "metadata": {"signature_def": json_format.MessageToDict(sigmap, **opts)},
    }
    return json.dumps(doc, indent=1).encode("utf-8")


def encode_error(message: str) -> bytes:
    """TF Serving's error body ``{"error": "<message>"}``."""
    return encode_json({"error": message})
