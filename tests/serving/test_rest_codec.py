"""The REST JSON codec and the path router, as pure functions (no sockets).

Expected strings are TF Serving's (tf-serving-api.md §2, §9; ``json_tensor.cc``); where TF Serving
echoes the JSON value into a message, teeserve names its type instead (no tensor contents in errors).
"""

from __future__ import annotations

import base64
import json
import math
import time

import numpy as np
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from teeserve._proto import pb
from teeserve.serving import Code, ServingError, Signature, TensorSpec, VersionState, VersionStatus
from teeserve.serving.rest import _codec
from teeserve.serving.rest import (
    Endpoint,
    RequestFormat,
    encode_classification_result,
    encode_model_metadata,
    encode_model_status,
    encode_predict_response,
    encode_regression_result,
    parse_classify_regress,
    parse_predict,
    predict_inputs,
    route,
)

F, D, I32, U8, S, I64, B, HALF = 1, 2, 3, 4, 7, 9, 10, 19


def specs(**dtypes: int) -> dict[str, TensorSpec]:
    return {name: TensorSpec(f"{name}:0", dt, None) for name, dt in dtypes.items()}


def decode(body: str | bytes, **dtypes: int) -> tuple[RequestFormat, dict[str, np.ndarray]]:
    doc, _ = parse_predict(body.encode() if isinstance(body, str) else body)
    return predict_inputs(doc, specs(**dtypes))


def error_of(body: str, **dtypes: int) -> ServingError:
    with pytest.raises(ServingError) as info:
        decode(body, **dtypes)
    return info.value


# --- JSON document --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ("", "JSON Parse error: The document is empty"),
        ("  \n", "JSON Parse error: The document is empty"),
        ("{", "JSON Parse error: Expecting property name enclosed in double quotes at offset: 1"),
        ('{"instances": [1,]}', "JSON Parse error: Expecting value at offset: 17"),
        ("[1, 2]", "JSON Value: (Array) Is not object"),
        ('{"signature_name": 3, "instances": [1]}',
         "JSON Value not formatted correctly. 'signature_name' key must be a string value."),
    ],
)
def test_parse_errors(body: str, message: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_predict(body.encode())
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == message


def test_invalid_utf8_and_deep_nesting_are_parse_errors() -> None:
    for body in (b'{"instances": ["\xff"]}', b'{"instances": ["\xc3"]}'):
        with pytest.raises(ServingError) as info:
            parse_predict(body)
        assert info.value.code == Code.INVALID_ARGUMENT
        assert info.value.message == "JSON Parse error: Invalid encoding in string. at offset: 16"
    with pytest.raises(ServingError, match="JSON Parse error"):
        parse_predict(b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}")


def test_signature_name_read() -> None:
    assert parse_predict(b'{"signature_name": "multi", "inputs": 1}')[1] == "multi"
    assert parse_predict(b'{"inputs": 1}')[1] == ""


# --- predict request formats ------------------------------------------------------------------------


def test_row_single_input_batches_instances() -> None:
    fmt, t = decode('{"instances": [[1, 2], [3, 4.5], [5e-1, 6E2]]}', x=F)
    assert fmt is RequestFormat.ROW
    np.testing.assert_array_equal(t["x"], np.array([[1, 2], [3, 4.5], [0.5, 600]], dtype=np.float32))
    assert t["x"].dtype == np.float32


def test_row_named_inputs_as_objects() -> None:
    fmt, t = decode('{"instances": [{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": {"b64": "eXo="}}]}', a=F, b=S)
    assert fmt is RequestFormat.ROW
    assert t["a"].shape == (2, 2)
    assert t["b"].dtype == object and t["b"].tolist() == [b"x", b"yz"]


def test_columnar_single_and_named() -> None:
    fmt, t = decode('{"inputs": [[1, 2, 3]]}', x=I64)
    assert fmt is RequestFormat.COLUMNAR and t["x"].dtype == np.int64 and t["x"].shape == (1, 3)
    # batch dimensions may differ between columnar inputs; extra keys are ignored (as TF Serving)
    fmt, t = decode('{"inputs": {"a": [[1, 2]], "b": ["p", "q", "r"], "zzz": 1}}', a=F, b=S)
    assert t["a"].shape == (1, 2) and t["b"].shape == (3,) and set(t) == {"a", "b"}
    # a scalar input is a 0-d tensor
    _, t = decode('{"inputs": 7}', x=I32)
    assert t["x"].shape == () and t["x"] == 7


def test_b64_anywhere_a_string_is_allowed() -> None:
    raw = bytes(range(256))
    enc = base64.b64encode(raw).decode()
    _, t = decode(json.dumps({"inputs": {"b64": enc}}), s=S)
    assert t["s"].shape == () and t["s"].item() == raw
    _, t = decode(json.dumps({"instances": [{"b64": enc}, {"b64": "YQ"}]}), s=S)  # unpadded accepted
    assert t["s"].tolist() == [raw, b"a"]


def test_nan_infinity_tokens_and_exponents() -> None:
    _, t = decode('{"inputs": [NaN, Infinity, -Infinity, 1e3, -2.5E-3]}', x=F)
    x = t["x"]
    assert math.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf
    np.testing.assert_array_equal(x[3:], np.array([1000, -0.0025], dtype=np.float32))


@pytest.mark.parametrize(
    "body, dtype, np_dtype",
    [
        ('{"inputs": [true, false]}', B, np.bool_),
        ('{"inputs": [1, -2]}', I32, np.int32),
        ('{"inputs": [255, 0]}', U8, np.uint8),
        ('{"inputs": [9007199254740993]}', I64, np.int64),
        ('{"inputs": [1.5, 2]}', D, np.float64),
        ('{"inputs": [1.5, 2]}', HALF, np.float16),
        ('{"inputs": []}', F, np.float32),
    ],
)
def test_dtype_mapping(body: str, dtype: int, np_dtype: type) -> None:
    _, t = decode(body, x=dtype)
    assert t["x"].dtype == np_dtype
    assert t["x"].tolist() == json.loads(body)["inputs"]


@pytest.mark.parametrize(
    "body, dtypes, message",
    [
        ('{"foo": 1}', {"x": F}, "Missing 'inputs' or 'instances' key"),
        ('{"inputs": 1, "instances": [1]}', {"x": F},
         "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
        ('{"instances": 1}', {"x": F}, "Excepting 'instances' to be an list/array"),
        ('{"instances": []}', {"x": F}, "No values in 'instances' array"),
        ('{"instances": [{"b64": "!!"}]}', {"x": S},
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 decode"),
        ('{"inputs": {"b64": "a=b"}}', {"x": S}, "Unable to base64 decode"),
        ('{"instances": [[1, 2], [3]]}', {"x": F},
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"),
        ('{"instances": [[1, 2], [[3], [4]]]}', {"x": F},
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [2,1]"),
        ('{"inputs": {"a": [1]}}', {"a": F, "b": F}, "Missing named input: b in 'inputs' object."),
        ('{"instances": [{"a": 1, "c": 2}]}', {"a": F, "b": F},
         "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: "
         "JSON object: does not have named input: c"),
        ('{"instances": [{"a": 1}]}', {"a": F, "b": F},
         "Failed to process element: 0 of 'instances' list. JSON object: (Object) keys must be equal to: a,b"),
        ('{"instances": [1, 2]}', {"a": F, "b": F},
         "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
         "tensorinfo_map"),
        ('{"inputs": [1, 2]}', {"a": F, "b": F},
         "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
         "tensorinfo_map"),
        ('{"instances": [1, {"x": 2}]}', {"x": F}, "Expecting value/list but got object at item 1 of input list"),
        ('{"instances": [{"a": 1, "b": 2}, 3]}', {"a": F, "b": F}, "Expecting object but got list at item 1 of input list"),
        ('{"inputs": ["a"]}', {"x": F}, "JSON Value: (String) Type: String is not of expected type: float"),
        ('{"inputs": [1.5]}', {"x": I32}, "JSON Value: (Number) Type: Number is not of expected type: int32"),
        ('{"inputs": [true]}', {"x": F}, "JSON Value: (True) Type: True is not of expected type: float"),
        ('{"inputs": [3000000000]}', {"x": I32}, "JSON Value: (Number) Type: Number is not of expected type: int32"),
        ('{"inputs": [256]}', {"x": U8}, "JSON Value: (Number) Type: Number is not of expected type: uint8"),
        ('{"inputs": [1]}', {"x": B}, "JSON Value: (Number) Type: Number is not of expected type: bool"),
        ('{"inputs": [null]}', {"x": F}, "JSON Value: (Null) Type: Null is not of expected type: float"),
        ('{"inputs": [1e39]}', {"x": F}, "Cannot convert JSON value: (Number) to float without loss of precision."),
        ('{"inputs": [16777217]}', {"x": F}, "Cannot convert JSON value: (Number) to float without loss of precision."),
        ('{"inputs": [[1], 2]}', {"x": F}, "JSON Value: (Number) found at incorrect level: 2 in the JSON DOM. "
                                           "Expected at level: 2"),
        ('{"inputs": [1, [2]]}', {"x": F}, "Encountered list at unexpected level: 1 expected < 1"),
        ('{"inputs": [[1, 2], [3]]}', {"x": F}, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ('{"inputs": [{"x": 1}]}', {"x": S}, "JSON Value: (Object) not formatted correctly for base64 data"),
    ],
)
def test_predict_request_errors(body: str, dtypes: dict[str, int], message: str) -> None:
    err = error_of(body, **dtypes)
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


@pytest.mark.parametrize(
    "body, dtype",
    [
        ('{"inputs": [1.5, true]}', F),        # a bool among numbers
        ('{"inputs": [1, "2"]}', I32),          # a numeric string
        ('{"inputs": [[1, 2], [3, null]]}', D),  # null is not NaN
        ('{"inputs": [1, 2.0]}', I64),          # 2.0 is a decimal, not an integer
        ('{"inputs": [-1]}', 23),               # uint64
        ('{"inputs": [true, 1]}', B),
    ],
)
def test_mixed_leaf_types_are_rejected_like_tf(body: str, dtype: int) -> None:
    err = error_of(body, x=dtype)
    assert "is not of expected type" in err.message


def test_long_string_among_numbers_does_not_blow_up_memory() -> None:
    """numpy's type inference would make a 20001 x 4 MB unicode array here (80 GB)."""
    body = json.dumps({"inputs": [0.5] * 20000 + ["x" * 1_000_000]})
    err = error_of(body, x=F)
    assert err.message == "JSON Value: (String) Type: String is not of expected type: float"


def test_unsupported_dtype_is_unimplemented() -> None:
    err = error_of('{"inputs": [1]}', x=8)  # complex64
    assert err.code == Code.UNIMPLEMENTED and "complex64" in err.message


def test_errors_never_echo_values() -> None:
    secret = "very-secret-pixel-value"
    err = error_of(json.dumps({"inputs": [secret]}), x=F)
    assert secret not in err.message


def test_large_image_request_is_parsed_with_numpy() -> None:
    """A 1x224x224x3 float request: correct values and dtype (its parse time is printed, not asserted)."""
    img = np.random.default_rng(1).random((1, 224, 224, 3)).astype(np.float32)
    body = json.dumps({"instances": img.tolist()}).encode()
    start = time.perf_counter()
    _, t = decode(body, x=F)
    elapsed = time.perf_counter() - start
    print(f"parse of a {len(body) / 1e6:.1f} MB 1x224x224x3 request: {elapsed * 1e3:.0f} ms")
    assert t["x"].dtype == np.float32 and t["x"].shape == img.shape
    np.testing.assert_array_equal(t["x"], img)


# --- predict responses -------------------------------------------------------------------------------


def test_row_response_single_output_drops_name() -> None:
    body = encode_predict_response({"y": np.array([0.2, 1, np.nan, np.inf, -np.inf, 1e20], np.float32)}, RequestFormat.ROW)
    assert body == b'{"predictions":[0.2,1.0,NaN,Infinity,-Infinity,1e+20]}'


def test_row_response_multiple_outputs_are_objects() -> None:
    outputs = {"a": np.array([[1, 2], [3, 4]], np.int32), "b_bytes": np.array([b"\x00\xff", b"z"], object),
               "c": np.array(["hi", "h\xe9"], object), "d": np.array([True, False])}
    doc = json.loads(encode_predict_response(outputs, RequestFormat.ROW))
    assert doc == {"predictions": [
        {"a": [1, 2], "b_bytes": {"b64": "AP8="}, "c": "hi", "d": True},
        {"a": [3, 4], "b_bytes": {"b64": "eg=="}, "c": "h\xe9", "d": False},
    ]}


def test_columnar_response() -> None:
    assert json.loads(encode_predict_response({"y": np.array([[1.5]], np.float64)}, RequestFormat.COLUMNAR)) == {
        "outputs": [[1.5]]}
    doc = json.loads(encode_predict_response(
        {"p": np.array([0.1, 0.7], np.float32), "k": np.array(3, np.int64)}, RequestFormat.COLUMNAR))
    assert doc == {"outputs": {"p": [0.1, 0.7], "k": 3}}


def test_row_response_batch_errors() -> None:
    with pytest.raises(ServingError, match="Tensor name: k has no shape information"):
        encode_predict_response({"k": np.array(3)}, RequestFormat.ROW)
    with pytest.raises(ServingError, match="Tensor name: b has inconsistent batch size: 3 expecting: 2"):
        encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, RequestFormat.ROW)


@pytest.mark.parametrize("n", [7, 5000])  # the small-tensor loop and the vectorised path
def test_float32_written_short_and_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    values = np.concatenate([np.array([0.2, 0.1, 1 / 3, 3.4028235e38, 1e-45, -0.0, 16777216], np.float32),
                             (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)])
    text = encode_predict_response({"y": values}, RequestFormat.COLUMNAR)
    back = np.array(json.loads(text)["outputs"], dtype=np.float32)
    np.testing.assert_array_equal(back, values)  # exact round trip
    assert b"0.2," in text and b"0.1," in text and b"0.20000000298" not in text
    for token in json.loads(text.decode())["outputs"]:  # never more digits than float32 needs
        mantissa = repr(abs(token)).split("e")[0].replace(".", "").strip("0")
        assert len(mantissa) <= 9, token


def test_nan_infinity_round_trip_through_codec() -> None:
    _, t = decode('{"instances": [NaN, Infinity, -Infinity, 2.5]}', x=F)
    text = encode_predict_response({"y": t["x"]}, RequestFormat.ROW)
    assert text == b'{"predictions":[NaN,Infinity,-Infinity,2.5]}'


@pytest.mark.parametrize(
    "body, maybe",
    [
        (b"[1234567890123456789]", True),  # 19 digits: maybe beyond int64
        (b"[-99999999999999999999]", True),
        (b"[123456789012345678]", False),  # 18 digits always fit
        (b"[0.12345678901234567890123]", False),  # a long fraction is a float either way
        (b"[0.12345678901234567890123, 12345678901234567890]", True),
        (b'{"s": "12345678901234567890"}', True),  # inside a string: a needless but harmless fallback
        (b"1234567890123456789", True),
        (b"", False),
    ],
)
def test_long_integer_literals_are_spotted(body: bytes, maybe: bool) -> None:
    assert _codec._maybe_long_int(body) is maybe


_JSON_LEAVES = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.floats(width=32) | st.text()
)
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_documents_parse_exactly_as_the_stdlib_reads_them(value: object) -> None:
    """orjson reads most bodies; the result must be the stdlib's to the type (an int stays an int)."""
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        body = text.encode("utf-8", "surrogatepass")
        try:
            want = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            with pytest.raises(UnicodeDecodeError):
                _codec._loads(body)
            continue
        assert repr(_codec._loads(body)) == repr(want)


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"inputs": [1]}',  # a UTF-8 BOM
        b'{"inputs": [1], "inputs": [2]}',  # duplicate keys: the last wins
        b'{"inputs": ["a\tb"]}',  # a raw control character in a string
        b'{"inputs": [NaN, Infinity, -Infinity]}',
        b'{"inputs": [-0, -0.0, 1E-400, 1e308, 1' + b'0' * 300 + b'e-200]}',
        b'{"inputs": [18446744073709551615, 18446744073709551616, -9223372036854775809]}',
        b'{"inputs": [1]} x',
        b' \n\t\r{"inputs": [1]}\r\n ',
        b'{"inputs": [1,]}',
        b'{"inputs": [01]}',
        b'{"inputs": [.5, 5., +1]}',
        b'{"inputs": [true, false, null]}',
        b'{"inputs": ["\xc3\xa9\xe2\x82\xac"]}',
        b'{"inputs": ["\xed\xa0\x80"]}',  # a UTF-8-encoded surrogate: invalid UTF-8
        b'{"a": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # deeper than orjson reads
    ],
)
def test_special_documents_parse_as_with_the_stdlib_alone(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def outcome() -> object:
        try:
            return repr(_codec.parse_json(body))
        except ServingError as exc:
            return (exc.code, exc.message)

    got = outcome()
    monkeypatch.setattr(_codec, "_loads", lambda b: json.loads(b.decode("utf-8")))
    assert got == outcome()


def test_rapidjson_inf_tokens_are_accepted() -> None:
    # TF Serving parses with kParseNanAndInfFlag: NaN, Inf and Infinity, each with an optional minus.
    doc = _codec.parse_json(b'{"inputs": [Inf, -Inf, NaN, -NaN, Infinity, -Infinity, 1], "s": "Inf -Inf"}')
    x = doc["inputs"]
    assert x[0] == math.inf and x[1] == -math.inf and math.isnan(x[2]) and math.isnan(x[3])
    assert x[4:] == [math.inf, -math.inf, 1] and doc["s"] == "Inf -Inf"  # strings are left alone
    _, t = decode('{"inputs": [Inf, -Inf]}', x=F)
    assert t["x"].tolist() == [math.inf, -math.inf]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # an error after a rewritten token is reported at its offset in the body as sent
        (b'{"inputs": [Inf, -Inf, 1,]}', "Expecting value at offset: 25"),
        (b'{"inputs": [-NaN, "Inf", 1e400]}', "Number too big to be stored in double. at offset: 25"),
        # rapidjson reports byte offsets: a two-byte character before the error counts twice
        ('{"\u00e9": [1,]}'.encode(), "Expecting value at offset: 10"),
        ('{"\u00e9": [Inf, 1,]}'.encode(), "Expecting value at offset: 15"),
    ],
)
def test_errors_near_inf_tokens_and_non_ascii_have_byte_offsets(body: bytes, message: str) -> None:
    with pytest.raises(ServingError) as info:
        _codec.parse_json(body)
    assert info.value.message == f"JSON Parse error: {message}"


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (rb'{"inputs": ["\ud800"]}', 13),  # a lone high surrogate
        (rb'{"inputs": ["ab\udc00"]}', 15),  # a lone low surrogate
        (rb'{"inputs": ["\ud800\u0041"]}', 13),  # a high one not followed by a low one
        (rb'{"inputs": ["\ud800x\udc00"]}', 13),
        (rb'{"inputs": ["\\\udbff"]}', 15),  # an escaped backslash, then the escape
        (rb'{"inputs": [NaN, "\uDFFF"]}', 18),  # on the stdlib path (NaN) too
        (rb'{"inputs": [1' + b"0" * 20 + rb', "\ud800"]}', 36),  # and on the long-integer path
        (rb'{"inputs": ["\ud800", 1,]}', 13),  # rapidjson stops at the first of the two errors
    ],
)
def test_lone_surrogate_escapes_are_refused_as_rapidjson_does(body: bytes, offset: int) -> None:
    with pytest.raises(ServingError) as info:
        _codec.parse_json(body)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"


def test_surrogates_are_accepted_only_as_whole_pairs() -> None:
    assert _codec.parse_json(rb'{"a": "\ud83d\ude00", "b": [NaN]}')["a"] == "\U0001F600"
    with pytest.raises(ServingError):  # the same high half alone
        _codec.parse_json(rb'{"a": "\ud83d", "b": [NaN]}')
    assert _codec.parse_json(rb'{"a": "\\ud800", "b": [NaN]}')["a"] == "\\ud800"  # text, not an escape
    with pytest.raises(ServingError) as info:  # the syntax error comes first
        _codec.parse_json(rb'{"a": [1,], "b": "\ud800"}')
    assert info.value.message == "JSON Parse error: Expecting value at offset: 9"


def test_error_bodies_are_always_valid_utf8() -> None:
    body = _codec.encode_error("bad \ud800 name \udfff")
    assert json.loads(body.decode("utf-8")) == {"error": "bad \ufffd name \ufffd"}
    assert _codec.encode_json({"a": "\u00e9"}) == '{"a":"\u00e9"}'.encode()


def test_an_integer_too_long_to_convert_is_a_400_not_a_crash() -> None:
    with pytest.raises(ServingError) as info:
        parse_predict(b'{"inputs": [1' + b"0" * 5000 + b"]}")
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == "JSON Parse error: Number too big to be stored in double. at offset: 12"


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (b'{"inputs": [1e400]}', 12),
        (b'{"inputs": [1.5, -1E+0400]}', 17),  # the sign belongs to the literal, as in rapidjson
        (b'{"inputs": [NaN, 1.8e308]}', 17),  # the stdlib path (NaN) checks too
        (b'{"inputs": [1' + b"0" * 400 + b"]}", 12),  # an integer beyond the double range
        (b'{"k\\"1e999": 1, "inputs": [2, 3e999]}', 30),  # a literal inside a string is skipped
    ],
)
def test_a_number_beyond_the_double_range_is_refused_as_rapidjson_does(body: bytes, offset: int) -> None:
    # TF Serving parses with rapidjson, which stops at such a literal (kParseErrorNumberTooBig) rather
    # than reading it as Infinity; only the NaN/Infinity tokens stand for infinities.
    with pytest.raises(ServingError) as info:
        parse_predict(body)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b'{"inputs": [1.7976931348623157e308, -1e-400, 1' + b"0" * 300 + b"e-299]}",
         [1.7976931348623157e308, -0.0, 10.0]),
        (b'{"inputs": [Infinity, -Infinity, 1e308]}', [math.inf, -math.inf, 1e308]),
        (b'{"inputs": [1' + b"0" * 308 + b"]}", [10**308]),
    ],
)
def test_numbers_at_the_edge_of_the_double_range_still_parse(body: bytes, want: list) -> None:
    assert _codec.parse_json(body)["inputs"] == want


_LEAF = (st.floats(allow_nan=True, allow_infinity=True) | st.floats(width=32)
         | st.integers(min_value=-(2**65), max_value=2**65)
         | st.sampled_from([16777216, 16777217, 2**53 + 1, 3.5e38, 1e39, 65504, 65520, 1e300, -1e39]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_LEAF, min_size=1, max_size=6), st.sampled_from([F, D, HALF, I32, I64, U8, 23]))
def test_the_numpy_fast_path_agrees_with_the_leaf_by_leaf_walk(values: list, dtype: int) -> None:
    """The fast path may only speed things up: same array, or (by returning None) the walk's error."""
    def walked() -> object:
        try:
            flat, shape = _codec._walk(values, dtype)
            with np.errstate(over="ignore"):
                return _codec._from_flat(flat, shape, dtype)
        except ServingError as exc:
            return exc.message

    want = walked()
    got = _codec._fast_array(values, dtype)
    if got is None:
        return  # the caller walks
    assert isinstance(want, np.ndarray), f"fast path accepted what the walk refuses: {want}"
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("values, dtype", [([math.nan, 1e39], F), ([math.nan, 16777217], F),
                                           ([math.nan, 2**53 + 1], D), ([math.nan, 70000.0], HALF)])
def test_a_nan_does_not_hide_a_value_the_dtype_cannot_hold(values: list, dtype: int) -> None:
    body = json.dumps({"inputs": values}).encode()
    with pytest.raises(ServingError, match="Cannot convert JSON value|out of range|loss of precision"):
        decode(body, x=dtype)


def test_an_output_named_null_still_takes_the_fast_path_and_nan_still_the_tokens() -> None:
    finite = {"is_null": np.array([0.5, 1.5], np.float32), "k": np.array([1, 2], np.int64)}
    text = encode_predict_response(finite, RequestFormat.ROW)
    assert text == _codec._encode_native(finite, sorted(finite), RequestFormat.ROW, 2)
    with_nan = {"is_null": np.array([np.nan, 1.5], np.float32), "k": np.array([1, 2], np.int64)}
    text = encode_predict_response(with_nan, RequestFormat.ROW)
    assert _codec._encode_native(with_nan, sorted(with_nan), RequestFormat.ROW, 2) is None
    assert text == b'{"predictions":[{"is_null":NaN,"k":1},{"is_null":1.5,"k":2}]}'


def _stdlib_written(outputs: dict[str, np.ndarray], fmt: RequestFormat, monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(_codec, "_encode_native", lambda *a: None)
        return encode_predict_response(outputs, fmt)


def _per_output(doc: dict, names: list[str]) -> dict[str, object]:
    """Each output's values from a predict response document, whatever its layout."""
    (key, value), = doc.items()
    if len(names) == 1:
        return {names[0]: value}
    if key == "outputs":
        return value
    return {n: [row[n] for row in value] for n in names}


def _same_values(got: object, want: object, dtype: np.dtype) -> None:
    """Equal values bit for bit in the tensor's own dtype (float32 texts may differ in digits)."""
    g, w = np.array(got, dtype=dtype), np.array(want, dtype=dtype)
    assert g.shape == w.shape
    np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))
    assert np.array(got).dtype.kind == np.array(want).dtype.kind  # no int written as a float, etc.


@pytest.mark.parametrize(
    "arr",
    [
        np.array([[0.2, 1, 3.4028235e38, 1e-45, -0.0]], np.float32),
        np.array([[0.1, 1e300, 5e-324]], np.float64),
        np.array([[0.1, 65504, 6e-8]], np.float16),  # written as float32, as TF Serving
        np.array([[-128, 127]], np.int8),
        np.array([[0, 2**64 - 1]], np.uint64),
        np.array([[-(2**63), 2**63 - 1]], np.int64).astype(np.longlong),  # what ORT returns
        np.array([[1, 2]], np.dtype(">i4")),  # not native byte order
        np.array([[1.5, 2.5]], np.dtype(">f4")),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.array([[True, False]]),
        np.zeros((2, 0), np.float32),
    ],
    ids=lambda a: f"{a.dtype.str}-{a.shape}-{'C' if a.flags.c_contiguous else 'F'}",
)
@pytest.mark.parametrize("fmt", [RequestFormat.ROW, RequestFormat.COLUMNAR])
def test_numpy_outputs_written_by_orjson_read_back_as_the_stdlib_path(
        arr: np.ndarray, fmt: RequestFormat, monkeypatch: pytest.MonkeyPatch) -> None:
    canon = arr.astype(np.float32 if arr.dtype == np.float16 else arr.dtype.newbyteorder("="))
    for outputs, dtypes in (({"y": arr}, {"y": canon.dtype}),
                            ({"y": arr, "k": np.arange(arr.shape[0], dtype=np.longlong)},
                             {"y": canon.dtype, "k": np.dtype(np.int64)})):
        native = _codec._encode_native({n: np.asarray(a) for n, a in outputs.items()}, sorted(outputs), fmt,
                                       arr.shape[0])
        assert native is not None, "finite numbers and booleans are written by orjson"
        assert encode_predict_response(outputs, fmt) == native
        names = sorted(outputs)
        got = _per_output(json.loads(native), names)
        want = _per_output(json.loads(_stdlib_written(outputs, fmt, monkeypatch)), names)
        assert got.keys() == want.keys()
        for n in names:
            _same_values(got[n], want[n], dtypes[n])


def test_zero_dim_columnar_output_is_a_scalar() -> None:
    assert encode_predict_response({"k": np.array(3, np.longlong)}, RequestFormat.COLUMNAR) == b'{"outputs":3}'


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=40))
def test_any_float32_bit_pattern_round_trips(bits: list[int]) -> None:
    values = np.array(bits, np.uint32).view(np.float32)
    text = encode_predict_response({"y": values}, RequestFormat.COLUMNAR)
    back = np.array(json.loads(text)["outputs"], dtype=np.float32)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(back[finite].view(np.uint32), values[finite].view(np.uint32))
    np.testing.assert_array_equal(np.isnan(back), np.isnan(values))  # NaN/Infinity tokens: the stdlib path
    np.testing.assert_array_equal(back[np.isinf(values)], values[np.isinf(values)])


# --- classify / regress --------------------------------------------------------------------------------


def test_classify_request_to_examples_with_context() -> None:
    sig, inp = parse_classify_regress(
        b'{"signature_name": "cls", "context": {"lang": "en", "w": [1.5, 2.0]},'
        b' "examples": [{"n": [1, 2], "b": {"b64": "AAE="}, "flag": true}, {"f": 0.25, "s": ["a", "b"]}]}',
        "classify",
    )
    assert sig == "cls"
    assert inp.WhichOneof("kind") == "example_list_with_context"
    ctx = inp.example_list_with_context.context.features.feature
    assert ctx["lang"].bytes_list.value == [b"en"]
    assert list(ctx["w"].float_list.value) == [1.5, 2.0]
    ex = inp.example_list_with_context.examples
    assert list(ex[0].features.feature["n"].int64_list.value) == [1, 2]
    assert ex[0].features.feature["b"].bytes_list.value == [b"\x00\x01"]
    assert list(ex[0].features.feature["flag"].int64_list.value) == [1]
    assert list(ex[1].features.feature["f"].float_list.value) == [0.25]
    assert ex[1].features.feature["s"].bytes_list.value == [b"a", b"b"]


def test_regress_request_without_context() -> None:
    _, inp = parse_classify_regress(b'{"examples": [{"x": 1}]}', "regress")
    assert inp.WhichOneof("kind") == "example_list"
    assert list(inp.example_list.examples[0].features.feature["x"].int64_list.value) == [1]


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"context": {}}', "When method is classify, key 'examples' is expected and was not found"),
        ('{"examples": {}}', "Expecting 'examples' value to be an list/array"),
        ('{"examples": []}', "'examples' value is an empty array"),
        ('{"examples": [1]}', "Example must be JSON object but got JSON Number"),
        ('{"context": [], "examples": [{}]}', "Example must be JSON object but got JSON Array"),
        ('{"examples": [{"f": [1, 1.5]}]}', "Unexpected element type in feature: f expecting type: int64"),
        ('{"examples": [{"f": [1.5, "a"]}]}', "Unexpected element type in feature: f expecting type: float"),
        ('{"examples": [{"f": null}]}', "Feature: f has element with unexpected JSON type: Null"),
        ('{"examples": [{"f": [[1]]}]}', "Feature: f has element with unexpected JSON type: Array"),
        ('{"examples": [{"f": {"x": 1}}]}', "Feature: f has element with unexpected JSON type: Object"),
        ('{"examples": [{"f": 18446744073709551615}]}', "Feature: f has uint64 element. Only int64 is supported."),
        ('{"examples": [{"f": {"b64": "%%%"}}]}', "Unable to base64 decode"),
    ],
)
def test_classify_request_errors(body: str, message: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_classify_regress(body.encode(), "classify")
    assert info.value.code == Code.INVALID_ARGUMENT and info.value.message == message


def test_classification_and_regression_results() -> None:
    result = pb.ClassificationResult()
    c = result.classifications.add()
    c.classes.add(label="cat", score=0.7)
    c.classes.add(label="dog", score=0.3)
    result.classifications.add().classes.add(label="x", score=float("nan"))
    assert encode_classification_result(result) == b'{"results":[[["cat",0.7],["dog",0.3]],[["x",NaN]]]}'
    reg = pb.RegressionResult()
    reg.regressions.add(value=0.2)
    reg.regressions.add(value=-3)
    assert encode_regression_result(reg) == b'{"results":[0.2,-3.0]}'
    with pytest.raises(ServingError, match="Cannot convert empty ClassificationResults to JSON"):
        encode_classification_result(pb.ClassificationResult())
    with pytest.raises(ServingError, match="Cannot convert empty RegressionResults to JSON"):
        encode_regression_result(pb.RegressionResult())


# --- status and metadata -----------------------------------------------------------------------------


def test_model_status_json() -> None:
    body = encode_model_status([
        VersionStatus(123, VersionState.AVAILABLE),
        VersionStatus(124, VersionState.END, Code.DATA_LOSS, "tampered"),
    ])
    assert json.loads(body) == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "124", "state": "END", "status": {"error_code": "DATA_LOSS", "error_message": "tampered"}},
    ]}


def test_model_metadata_json_matches_tf_serving_shape() -> None:
    sigs = {
        "serving_default": Signature(
            "tensorflow/serving/predict",
            {"x": TensorSpec("x:0", F, (-1, 3))},
            {"y": TensorSpec("y:0", F, None)},
        )
    }
    doc = json.loads(encode_model_metadata("m", 7, sigs))
    assert doc["model_spec"] == {"name": "m", "signature_name": "", "version": "7"}
    assert set(doc) == {"model_spec", "metadata"} and set(doc["metadata"]) == {"signature_def"}

    # What TF Serving prints: the SignatureDefMap unpacked from the response's Any, proto field names,
    # all primitive fields. Build it independently from the protos and compare.
    sigmap = pb.SignatureDefMap()
    sd = sigmap.signature_def["serving_default"]
    sd.method_name = "tensorflow/serving/predict"
    sd.inputs["x"].name = "x:0"
    sd.inputs["x"].dtype = F
    sd.inputs["x"].tensor_shape.dim.add(size=-1)
    sd.inputs["x"].tensor_shape.dim.add(size=3)
    sd.outputs["y"].name = "y:0"
    sd.outputs["y"].dtype = F
    sd.outputs["y"].tensor_shape.unknown_rank = True
    response = pb.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(sigmap)
    unpacked = pb.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(unpacked)
    expected = json_format.MessageToDict(unpacked, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True)
    assert doc["metadata"]["signature_def"] == expected
    x = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and x["tensor_shape"]["dim"][0]["size"] == "-1"


# --- routes --------------------------------------------------------------------------------------------


def test_long_paths_are_routed_but_not_cached() -> None:
    from teeserve.serving.rest import _routes

    before = _routes._cached_route.cache_info().currsize
    for i in range(20):
        r = route("POST", f"/v1/models/{'m' * 300}{i}:predict")
        assert r.endpoint is Endpoint.PREDICT and r.model.endswith(str(i))
    assert _routes._cached_route.cache_info().currsize == before
    assert route("GET", "/v1/models/digits") is route("GET", "/v1/models/digits")  # short: cached


def test_a_huge_version_number_is_a_400() -> None:
    with pytest.raises(ServingError) as info:
        route("GET", "/v1/models/m/versions/" + "9" * 5000)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.message == f"Failed to convert version: {'9' * 40}... to numeric."


@pytest.mark.parametrize(
    "method, path, endpoint, model, version, label",
    [
        ("GET", "/v1/models/m", Endpoint.STATUS, "m", None, None),
        ("GET", "/v1/models/m/versions/12", Endpoint.STATUS, "m", 12, None),
        ("GET", "/v1/models/m/labels/stable", Endpoint.STATUS, "m", None, "stable"),
        ("GET", "/V1/MODELS/m/metadata", Endpoint.METADATA, "m", None, None),
        ("GET", "/v1/models/m/versions/3/metadata", Endpoint.METADATA, "m", 3, None),
        ("GET", "/v1/models/m/METADATA", Endpoint.STATUS, "m", None, None),  # TF: case-sensitive dispatch
        ("POST", "/v1/models/m:predict", Endpoint.PREDICT, "m", None, None),
        ("POST", "/v1/models/m/versions/2:classify", Endpoint.CLASSIFY, "m", 2, None),
        ("POST", "/v1/models/my%20model/labels/can%61ry:regress", Endpoint.REGRESS, "my model", None, "canary"),
        ("GET", "/v1/health/live", Endpoint.LIVE, "", None, None),
        ("GET", "/v1/health/ready", Endpoint.READY, "", None, None),
    ],
)
def test_routes(method: str, path: str, endpoint: Endpoint, model: str, version: int | None, label: str | None) -> None:
    r = route(method, path)
    assert (r.endpoint, r.model, r.version, r.label) == (endpoint, model, version, label)


@pytest.mark.parametrize(
    "method, path, code, message",
    [
        ("GET", "/v1/models", Code.INVALID_ARGUMENT, "Missing model name in request."),
        ("POST", "/v1/models/m", Code.INVALID_ARGUMENT, "Malformed request: POST /v1/models/m"),
        ("GET", "/v1/models/m:predict", Code.INVALID_ARGUMENT, "Malformed request: GET /v1/models/m:predict"),
        ("POST", "/v1/models/m:PREDICT", Code.INVALID_ARGUMENT, "Malformed request: POST /v1/models/m:PREDICT"),
        ("PUT", "/v1/models/m", Code.INVALID_ARGUMENT, "Malformed request: PUT /v1/models/m"),
        ("POST", "/v1/models/m/versions/x:predict", Code.INVALID_ARGUMENT,
         "Malformed request: POST /v1/models/m/versions/x:predict"),
        ("POST", "/v1/models/m/versions/99999999999999999999:predict", Code.INVALID_ARGUMENT,
         "Failed to convert version: 99999999999999999999 to numeric."),
        ("GET", "/v1/models/m/versions/1/labels/x", Code.INVALID_ARGUMENT,
         "Malformed request: GET /v1/models/m/versions/1/labels/x"),
        ("GET", "/", Code.NOT_FOUND, "Not found: GET /"),
        ("GET", "/monitoring/prometheus/metrics", Code.NOT_FOUND, "Not found: GET /monitoring/prometheus/metrics"),
    ],
)
def test_route_errors(method: str, path: str, code: Code, message: str) -> None:
    with pytest.raises(ServingError) as info:
        route(method, path)
    assert info.value.code == code and info.value.message == message


def test_monitoring_route_only_when_enabled() -> None:
    assert route("GET", "/metrics", "/metrics").endpoint is Endpoint.METRICS
    with pytest.raises(ServingError):
        route("GET", "/metrics", None)
