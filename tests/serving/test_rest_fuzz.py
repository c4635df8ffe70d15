"""Hypothesis fuzzing of REST bodies against a running server.

Property: whatever the body (arbitrary JSON, near-valid predict/classify JSON, arbitrary bytes), the
answer is a 2xx with a JSON body, or a 4xx with an ``{"error": "..."}`` JSON body — never a 5xx — and
the server keeps serving. The fake core asserts that every tensor it receives has the signature's dtype,
so a codec bug that lets a wrong dtype through shows up as a 500 here.
"""

from __future__ import annotations

import http.client as httpc
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_rest_fakes import FakeCore, ServerThread  # noqa: E402

PATHS = [
    "/v1/models/half:predict",
    "/v1/models/half/versions/1:predict",
    "/v1/models/half/labels/canary:predict",
    "/v1/models/digits:predict",
    "/v1/models/half:classify",
    "/v1/models/half/versions/2:regress",
    "/v1/models/nope:predict",
]
SIGNATURES = ["", "serving_default", "multi", "types", "strings", "classify_x", "nope"]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.builds(lambda s: {"b64": s}, st.sampled_from(["", "YQ==", "YQ", "!!", "AAEC", "\u00e9"]))
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["a", "b", "x", "s", "i", "flag", "d", "b64"]) | st.text(max_size=4), children, max_size=4),
    max_leaves=30,
)
# numeric nested lists of a consistent or slightly ragged shape
tensors = st.recursive(
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40) | st.booleans(),
    lambda children: st.lists(children, min_size=0, max_size=4),
    max_leaves=40,
)
predict_docs = st.fixed_dictionaries(
    {},
    optional={
        "signature_name": st.sampled_from(SIGNATURES) | json_leaf,
        "instances": st.lists(tensors | json_values, max_size=4) | json_values,
        "inputs": tensors | st.dictionaries(st.sampled_from(["a", "b", "x", "s", "i", "flag", "d"]), tensors | json_values, max_size=4),
    },
)
classify_docs = st.fixed_dictionaries(
    {},
    optional={
        "signature_name": st.sampled_from(SIGNATURES),
        "context": json_values,
        "examples": st.lists(st.dictionaries(st.text(max_size=3), json_values, max_size=3) | json_values, max_size=4) | json_values,
    },
)


def _dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


bodies = (
    st.builds(_dumps, predict_docs)
    | st.builds(_dumps, classify_docs)
    | st.builds(_dumps, json_values)
    | st.binary(max_size=200)
    | st.builds(lambda b, cut: b[:cut], st.builds(_dumps, predict_docs), st.integers(0, 60))  # truncated JSON
)


@pytest.fixture(scope="module")
def server():
    with ServerThread(FakeCore(), timeout_ms=5000, monitoring_path="/metrics") as s:
        yield s


class _Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = httpc.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path: str, body: bytes) -> tuple[int, bytes, str]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type", "")


def _check(status: int, data: bytes, content_type: str) -> None:
    assert status < 500, (status, data)
    assert content_type == "application/json"
    doc = json.loads(data)
    if status >= 400:
        assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"], doc
    else:
        assert 200 <= status < 300 and isinstance(doc, dict)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), body=bodies)
def test_fuzz_rest_bodies(server, path: str, body: bytes) -> None:
    client = getattr(server, "_fuzz_client", None) or _Client(server.port)
    server._fuzz_client = client
    _check(*client.post(path, body))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400))
def test_fuzz_raw_bytes_on_the_socket(server, body: bytes) -> None:
    """Arbitrary bytes as a whole HTTP message: any reply is a well-formed 4xx/2xx, never a 5xx."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if data:
        assert data.startswith(b"HTTP/1.1 "), data[:100]
        assert not data[9:10] == b"5", data[:200]


numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**65), 2**65)
scalars = numbers | st.booleans() | st.text(max_size=5) | st.builds(lambda t: {"b64": t}, st.sampled_from(["YQ==", "AAEC", "%"]))
well_formed = st.one_of(
    # half/serving_default: x float[-1]
    st.builds(lambda v: ("/v1/models/half:predict", {"instances": v}), st.lists(numbers, min_size=1, max_size=6)),
    st.builds(lambda v: ("/v1/models/half/versions/1:predict", {"inputs": v}), st.lists(numbers, max_size=6)),
    # digits: x float[-1, 64]
    st.builds(lambda rows: ("/v1/models/digits:predict", {"instances": rows}),
              st.lists(st.lists(st.floats(-1e6, 1e6) | st.integers(-100, 100), min_size=64, max_size=64), min_size=1, max_size=3)),
    # types: i int32, flag bool, d double
    st.builds(lambda i, f, d: ("/v1/models/half:predict", {"signature_name": "types", "inputs": {"i": i, "flag": f, "d": d}}),
              st.lists(st.integers(-(2**33), 2**33) | st.booleans(), max_size=4),
              st.lists(st.booleans() | st.integers(0, 1), max_size=4),
              st.lists(numbers | st.booleans(), max_size=4)),
    # multi, row format: a float[2], b string
    st.builds(lambda rows: ("/v1/models/half:predict", {"signature_name": "multi", "instances": rows}),
              st.lists(st.fixed_dictionaries({"a": st.lists(numbers, min_size=2, max_size=2), "b": scalars}), min_size=1, max_size=4)),
    # strings
    st.builds(lambda v: ("/v1/models/half:predict", {"signature_name": "strings", "instances": v}), st.lists(scalars, min_size=1, max_size=4)),
    # classify / regress with random feature values
    st.builds(lambda ctx, ex: ("/v1/models/half:classify", {"context": ctx, "examples": ex}),
              st.dictionaries(st.text(min_size=1, max_size=3), scalars | st.lists(scalars, max_size=3), max_size=3),
              st.lists(st.dictionaries(st.text(min_size=1, max_size=3), scalars | st.lists(scalars, max_size=3), max_size=3), min_size=1, max_size=3)),
    st.builds(lambda ex: ("/v1/models/half:regress", {"examples": ex}),
              st.lists(st.dictionaries(st.text(min_size=1, max_size=3), scalars | st.lists(numbers, max_size=3), max_size=3), min_size=1, max_size=3)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=well_formed)
def test_fuzz_well_formed_requests_with_edge_values(server, request: tuple[str, object]) -> None:
    """Structurally valid requests with edge-case values (NaN, huge ints, bools, bad b64): mostly 200s."""
    path, doc = request
    client = getattr(server, "_fuzz_client", None) or _Client(server.port)
    server._fuzz_client = client
    status, data, content_type = client.post(path, _dumps(doc))
    _check(status, data, content_type)
    if status == 200 and path.endswith(":predict"):
        assert set(json.loads(data)) == {"predictions"} if "instances" in doc else {"outputs"}


def test_server_survives_fuzzing(server) -> None:
    client = _Client(server.port)
    status, data, _ = client.post("/v1/models/half:predict", b'{"instances": [1.0]}')
    assert (status, data) == (200, b'{"predictions":[3.5]}')
    client.conn.request("GET", "/metrics")
    resp = client.conn.getresponse()
    assert resp.status == 200 and b":tensorflow:serving:request_count" in resp.read()
