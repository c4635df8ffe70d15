"""The REST front end over a real loopback HTTP server (raw HTTP via http.client and sockets).

The serving core is the fake of ``test_rest_fakes.py``; the integration with the real ``ServingCore``
is in ``test_rest_core.py``.
"""

from __future__ import annotations

import gzip
import http.client as httpc
import json
import math
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from test_rest_fakes import EVENT_LOOP, FakeCore, ServerThread, http  # noqa: E402

from teeserve.serving._eventloop import loop_name  # noqa: E402
from teeserve.serving.rest import DEFAULT_MONITORING_PATH  # noqa: E402

MON = DEFAULT_MONITORING_PATH


@pytest.fixture(scope="module", params=["uvloop", "asyncio"], autouse=True)
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on both loops: uvloop (the server's default) and the stdlib's."""
    old = EVENT_LOOP["kind"]
    EVENT_LOOP["kind"] = request.param
    yield request.param
    EVENT_LOOP["kind"] = old


@pytest.fixture(scope="module")
def srv(event_loop_kind: str):
    with ServerThread(FakeCore(), monitoring_path=MON, timeout_ms=2000, max_body_bytes=1 << 20) as server:
        yield server


def j(srv: ServerThread, method: str, path: str, body: object = None, **kw):
    data = body if body is None or isinstance(body, (bytes, str)) else json.dumps(body)
    status, headers, raw = http(srv.port, method, path, data, **kw)
    assert headers["content-type"].startswith("application/json"), headers
    return status, json.loads(raw)


def test_the_server_runs_on_the_loop_asked_for(srv, event_loop_kind: str) -> None:
    assert loop_name(srv.loop) == event_loop_kind


# --- status and metadata ---------------------------------------------------------------------------


def test_model_status_all_versions(srv) -> None:
    status, doc = j(srv, "GET", "/v1/models/half")
    assert status == 200
    versions = {v["version"]: v for v in doc["model_version_status"]}
    assert versions["1"] == {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert versions["3"]["state"] == "END" and versions["3"]["status"]["error_code"] == "DATA_LOSS"


def test_model_status_version_and_label(srv) -> None:
    assert j(srv, "GET", "/v1/models/half/versions/2")[1]["model_version_status"][0]["version"] == "2"
    assert j(srv, "GET", "/v1/models/half/labels/stable")[1]["model_version_status"][0]["version"] == "1"


def test_model_status_errors(srv) -> None:
    assert j(srv, "GET", "/v1/models/nope") == (404, {"error": "Could not find any versions of model nope"})
    assert j(srv, "GET", "/v1/models/half/versions/9") == (404, {"error": "Could not find version 9 of model half"})
    assert j(srv, "GET", "/v1/models/half/labels/zzz") == (400, {"error": "Unrecognized servable version label: zzz"})
    assert j(srv, "GET", "/v1/models") == (400, {"error": "Missing model name in request."})


def test_metadata(srv) -> None:
    status, doc = j(srv, "GET", "/v1/models/half/labels/canary/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "half", "signature_name": "", "version": "2"}
    sd = doc["metadata"]["signature_def"]["signature_def"]
    assert sd["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert sd["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert sd["multi"]["outputs"]["b_bytes"]["dtype"] == "DT_STRING"
    assert j(srv, "GET", "/v1/models/half/versions/1/metadata")[1]["model_spec"]["version"] == "1"
    assert j(srv, "GET", "/v1/models/nope/metadata") == (404, {"error": "Servable not found for request: Latest(nope)"})


# --- predict -------------------------------------------------------------------------------------------


def test_predict_row_and_columnar(srv) -> None:
    # the fake's half model computes 0.5 * x + 2 in version 1 and 0.5 * x + 3 in version 2 (latest)
    assert j(srv, "POST", "/v1/models/half:predict", {"instances": [1.0, 2.0, 5.0]}) == (200, {"predictions": [3.5, 4.0, 5.5]})
    assert j(srv, "POST", "/v1/models/half:predict", {"inputs": [1.0, 2.0]}) == (200, {"outputs": [3.5, 4.0]})


def test_predict_versions_and_labels(srv) -> None:
    # version 2 of the fake adds one more: the path selects the servable
    assert j(srv, "POST", "/v1/models/half/versions/2:predict", {"instances": [1.0]})[1] == {"predictions": [3.5]}
    assert j(srv, "POST", "/v1/models/half/labels/stable:predict", {"instances": [1.0]})[1] == {"predictions": [2.5]}
    assert j(srv, "POST", "/V1/Models/half/LABELS/canary:predict", {"instances": [1.0]})[1] == {"predictions": [3.5]}


def test_predict_named_inputs_b64_and_bytes_outputs(srv) -> None:
    status, doc = j(srv, "POST", "/v1/models/half:predict", {
        "signature_name": "multi",
        "instances": [{"a": [1, 2], "b": {"b64": "AAEC"}}, {"a": [0.5, 0.25], "b": "hey"}],
    })
    assert status == 200
    assert doc == {"predictions": [
        {"b_bytes": {"b64": "AAEC"}, "n": 3, "sum": 3.0},
        {"b_bytes": {"b64": "aGV5"}, "n": 3, "sum": 0.75},
    ]}
    status, doc = j(srv, "POST", "/v1/models/half:predict", {
        "signature_name": "multi", "inputs": {"a": [[1, 2]], "b": [{"b64": "/w=="}, "x"]}})
    assert doc == {"outputs": {"b_bytes": [{"b64": "/w=="}, {"b64": "eA=="}], "n": [1, 1], "sum": [3.0]}}


def test_predict_dtypes(srv) -> None:
    status, doc = j(srv, "POST", "/v1/models/half:predict", {
        "signature_name": "types", "inputs": {"i": [1, -2], "flag": [True, False], "d": [0.1, 1e300]}})
    assert status == 200
    assert doc == {"outputs": {"d": [0.1, 1e300], "flag": [True, False], "i": [1, -2]}}


def test_nan_infinity_round_trip(srv) -> None:
    raw = b'{"instances": [NaN, Infinity, -Infinity, 1e2]}'
    status, _, body = http(srv.port, "POST", "/v1/models/half:predict", raw)
    assert status == 200
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,53.0]}'
    values = json.loads(body)["predictions"]  # Python's json reads the tokens back
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_predict_errors(srv) -> None:
    p = "/v1/models/half:predict"
    cases = [
        ("", 400, "JSON Parse error: The document is empty"),
        ("{", 400, "JSON Parse error: Expecting property name enclosed in double quotes at offset: 1"),
        ('{"x": 1}', 400, "Missing 'inputs' or 'instances' key"),
        ('{"inputs": [1], "instances": [1]}', 400,
         "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
        ('{"instances": {}}', 400, "Excepting 'instances' to be an list/array"),
        ('{"instances": []}', 400, "No values in 'instances' array"),
        ('{"signature_name": "strings", "instances": [{"b64": "*"}]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 decode"),
        ('{"instances": [[1], [1, 2]]}', 400,
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2"),
        ('{"signature_name": "multi", "inputs": {"a": [[1, 2]]}}', 400, "Missing named input: b in 'inputs' object."),
        ('{"signature_name": "nope", "inputs": [1]}', 400, 'Serving signature name: "nope" not found in signature def'),
    ]
    for body, status, message in cases:
        assert j(srv, "POST", p, body) == (status, {"error": message}), body


def test_unknown_model_version_label(srv) -> None:
    body = {"instances": [1.0]}
    assert j(srv, "POST", "/v1/models/nope:predict", body) == (404, {"error": "Servable not found for request: Latest(nope)"})
    assert j(srv, "POST", "/v1/models/half/versions/7:predict", body) == (
        404, {"error": "Servable not found for request: Specific(half, 7)"})
    assert j(srv, "POST", "/v1/models/half/labels/beta:predict", body) == (
        400, {"error": "Unrecognized servable version label: beta"})


def test_malformed_and_unknown_paths(srv) -> None:
    assert j(srv, "GET", "/v1/models/half:predict") == (400, {"error": "Malformed request: GET /v1/models/half:predict"})
    assert j(srv, "DELETE", "/v1/models/half") == (400, {"error": "Malformed request: DELETE /v1/models/half"})
    assert j(srv, "POST", "/v1/models/half:explain", "{}") == (400, {"error": "Malformed request: POST /v1/models/half:explain"})
    assert j(srv, "GET", "/index.html") == (404, {"error": "Not found: GET /index.html"})
    # the query string is not part of the path
    assert j(srv, "GET", "/v1/models/half/versions/1?x=y")[0] == 200


# --- classify / regress -----------------------------------------------------------------------------


def test_classify_and_regress(srv) -> None:
    body = {"signature_name": "classify_x", "context": {"c": "x"}, "examples": [{"a": 1, "b": [1.5, 2.5]}, {"a": "q"}]}
    status, doc = j(srv, "POST", "/v1/models/half:classify", body)
    assert status == 200
    assert doc == {"results": [[["features", 2.0], ["tenth", 0.1]], [["features", 1.0], ["tenth", 0.1]]]}
    ctx_input = srv.core.last_input
    assert ctx_input.example_list_with_context.context.features.feature["c"].bytes_list.value == [b"x"]
    assert list(ctx_input.example_list_with_context.examples[0].features.feature["b"].float_list.value) == [1.5, 2.5]
    status, doc = j(srv, "POST", "/v1/models/half/versions/2:regress", {"examples": [{"a": 1}, {"a": 1, "b": 2}]})
    assert (status, doc) == (200, {"results": [1.2, 2.2]})
    assert srv.core.calls[-1][0] == "regress" and srv.core.calls[-1][1].version == 2
    assert j(srv, "POST", "/v1/models/half:classify", {"examples": []}) == (400, {"error": "'examples' value is an empty array"})
    assert j(srv, "POST", "/v1/models/nope:regress", {"examples": [{}]})[0] == 404


# --- HTTP behaviour --------------------------------------------------------------------------------------


def test_keep_alive_several_requests_one_connection(srv) -> None:
    conn = httpc.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        for i in range(5):
            status, _, body = http(srv.port, "POST", "/v1/models/half:predict", json.dumps({"instances": [float(i)]}), conn=conn)
            assert status == 200 and json.loads(body) == {"predictions": [0.5 * i + 3]}
            status, _, _ = http(srv.port, "GET", "/v1/models/nope", conn=conn)  # errors keep the connection too
            assert status == 404
        first_sock = conn.sock
        assert first_sock is not None  # http.client reconnects silently if the server closed it
        http(srv.port, "GET", "/v1/health/live", conn=conn)
        assert conn.sock is first_sock
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(srv) -> None:
    reqs = b"".join(
        b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in (b'{"instances": [%d]}' % i for i in range(4))
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(reqs)
        data = b""
        while data.count(b"predictions") < 4:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    bodies = [part.split(b"\r\n\r\n", 1)[1][: part.split(b"\r\n\r\n", 1)[1].index(b"}") + 1]
              for part in data.split(b"HTTP/1.1 ")[1:]]
    assert [json.loads(b)["predictions"][0] for b in bodies] == [3.0, 3.5, 4.0, 4.5]


def test_half_closed_connection_gets_its_answers_then_eof(srv) -> None:
    """A client that sends its requests and then shuts its side (eof_received) still gets every answer,
    after which the server closes the connection."""
    reqs = b"".join(
        b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in (b'{"instances": [%d]}' % i for i in range(3))
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(reqs)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):  # ends at the server's close; a hang fails by the timeout
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3 and data.count(b"predictions") == 3
    assert data.rstrip().endswith(b"}")


def test_chunked_body(srv) -> None:
    body = b'{"instances": [2.0, 4.0]}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:7], body[7:])) + b"0\r\n\r\n"
    req = b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.split(b"\r\n\r\n", 1)[1] == b'{"predictions":[4.0,5.0]}'


def test_oversize_body_413_before_upload(srv) -> None:
    limit = srv.server.max_body_bytes
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        # Only the headers are sent: the server must answer from Content-Length alone.
        s.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (limit + 1))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"error": f"Request body is larger than the limit of {limit} bytes"}


def test_oversize_chunked_body_413(srv) -> None:
    limit = srv.server.max_body_bytes
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        try:
            for _ in range(limit // len(piece) + 2):
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 413 ")


def test_body_at_limit_is_accepted() -> None:
    with ServerThread(FakeCore(), max_body_bytes=64) as small:
        body = b'{"instances": [1.0]}'.ljust(64)
        status, _, _ = http(small.port, "POST", "/v1/models/half:predict", body)
        assert status == 200
        status, _, _ = http(small.port, "POST", "/v1/models/half:predict", body + b" ")
        assert status == 413


def test_expect_100_continue(srv) -> None:
    body = b'{"instances": [0.0]}'
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"predictions":[3.0]}')


def test_garbage_http_gets_400_and_close(srv) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"error": "Malformed HTTP request"}


def test_huge_headers_431(srv) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /v1/models/half HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 431 ")


def test_idle_and_trickling_connections_are_closed() -> None:
    with ServerThread(FakeCore(), idle_timeout=0.3) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as idle:
            idle.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            first = idle.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            assert idle.recv(1024) == b""  # closed by the server after ~0.3 s of idleness
            assert time.monotonic() - start < 4
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as slow:
            slow.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nX-")
            start = time.monotonic()
            try:
                for _ in range(40):  # a header byte every 0.1 s (slow-loris): the headers never complete
                    time.sleep(0.1)
                    slow.sendall(b"a")
                pytest.fail("a trickling request was not cut off")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert time.monotonic() - start < 4
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as stalled:
            stalled.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            start = time.monotonic()
            assert stalled.recv(1024) == b""  # an upload with no byte for idle_timeout is closed
            assert time.monotonic() - start < 4
        assert http(s.port, "GET", "/v1/health/live")[0] == 200


def test_a_slow_but_steady_upload_is_not_cut_off() -> None:
    """The idle timeout counts inactivity: a body that keeps arriving, for longer than the timeout in
    all, is served (an 8 MB body at 90 KB/s takes longer than the default 75 s)."""
    with ServerThread(FakeCore(), idle_timeout=0.3) as s:
        body = b'{"instances": [1.0, 2.0]}'.ljust(60)
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as slow:
            slow.sendall(b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % len(body))
            start = time.monotonic()
            for i in range(0, len(body), 5):  # 12 pieces 0.1 s apart: 1.2 s in all, 4 x the idle timeout
                time.sleep(0.1)
                slow.sendall(body[i:i + 5])
            assert time.monotonic() - start > 1.0
            data = b""
            while chunk := slow.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"predictions":[3.5,4.0]}')


def test_keep_alive_survives_a_request_longer_than_the_idle_timeout() -> None:
    """The idle timer restarts when the answer is sent, not when the request arrived: a client that
    reuses the connection right after a slow answer is not cut off."""
    core = FakeCore()
    core.slow_seconds = 0.8
    with ServerThread(core, idle_timeout=0.3, timeout_ms=5000) as s:
        conn = httpc.HTTPConnection("127.0.0.1", s.port, timeout=10)
        try:
            status, _, body = http(s.port, "POST", "/v1/models/slow:predict", b'{"instances": [2.0]}', conn=conn)
            assert (status, body) == (200, b'{"predictions":[3.0]}')
            first_sock = conn.sock
            time.sleep(0.15)  # well within the idle timeout after the answer
            assert http(s.port, "GET", "/v1/health/live", conn=conn)[0] == 200
            assert conn.sock is first_sock  # http.client would reconnect silently after a close
        finally:
            conn.close()


def _exchange(port: int, raw: bytes, *, until: bytes | None = None) -> bytes:
    """Send ``raw`` and read until the server closes (or ``until`` has arrived)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while until is None or until not in data:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


def _bodies(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data`` (every response carries Content-Length)."""
    out = []
    while data:
        head, rest = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((int(head.split(b" ")[1]), rest[:length]))
        data = rest[length:]
    return out


def test_upgrade_header_is_ignored_and_served_as_http11(srv) -> None:
    """``curl --http2 http://...`` sends ``Upgrade: h2c``: HTTP/1.1 lets a server ignore it, and TF
    Serving's libevent does. No 101, no 400; bodies (by length or chunked) and keep-alive work."""
    up = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    body = b'{"instances": [1.0]}'
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:])
    raw = (b"GET /v1/models/half/versions/1 HTTP/1.1\r\nHost: x\r\n" + up + b"\r\n"
           + b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\n" + up
           + b"Content-Length: %d\r\n\r\n" % len(body) + body
           + b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\n" + up
           + b"Transfer-Encoding: chunked\r\n\r\n" + chunked
           + b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    # all at once (pipelined), then byte by byte (the body after the headers arrives separately)
    for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            for p in pieces:
                s.sendall(p)
            data = b""
            while data.count(b"HTTP/1.1 ") < 4 or not data.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            s.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n" + up + b"\r\n")  # still open
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        answers = _bodies(data)
        assert [a[0] for a in answers] == [200, 200, 200, 200], data
        assert json.loads(answers[0][1])["model_version_status"][0]["version"] == "1"
        assert [a[1] for a in answers[1:]] == [b'{"predictions":[3.5]}'] * 3


def test_gzip_request_bodies_are_inflated(srv) -> None:
    doc = {"instances": [1.0, 2.0]}
    packed = gzip.compress(json.dumps(doc).encode())
    for coding in ("gzip", "x-gzip", "GZIP"):  # TF Serving: the header contains "gzip"
        status, _, body = http(srv.port, "POST", "/v1/models/half:predict", packed, headers={"Content-Encoding": coding})
        assert (status, body) == (200, b'{"predictions":[3.5,4.0]}'), coding
    # concatenated gzip members are one gzip body; chunked transfer coding on top
    raw = json.dumps(doc).encode()
    two = gzip.compress(raw[:9]) + gzip.compress(raw[9:])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (two[:10], two[10:])) + b"0\r\n\r\n"
    data = _exchange(srv.port, b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks)
    assert _bodies(data) == [(200, b'{"predictions":[3.5,4.0]}')]
    # other codings are not decoded (as in TF Serving): the bytes are parsed as they are
    status, _, body = http(srv.port, "POST", "/v1/models/half:predict", json.dumps(doc), headers={"Content-Encoding": "br"})
    assert status == 200
    # an empty gzip body is an empty document, as in TF Serving
    assert j(srv, "POST", "/v1/models/half:predict", b"", headers={"Content-Encoding": "gzip"}) == (
        400, {"error": "JSON Parse error: The document is empty"})


def test_corrupt_gzip_body_is_400_and_keeps_the_connection(srv) -> None:
    packed = gzip.compress(b'{"instances": [1.0]}')
    message = {"error": "Failed to uncompress the gzipped request body (Content-Encoding: gzip): corrupt or truncated"}
    conn = httpc.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        for bad in (b"not gzip at all", packed[:-6], packed[:12] + b"\xff" * 8 + packed[20:], packed + b"junk"):
            status, _, body = http(srv.port, "POST", "/v1/models/half:predict", bad,
                                   headers={"Content-Encoding": "gzip"}, conn=conn)
            assert (status, json.loads(body)) == (400, message), bad
        first_sock = conn.sock
        status, _, body = http(srv.port, "POST", "/v1/models/half:predict", packed,
                               headers={"Content-Encoding": "gzip"}, conn=conn)
        assert (status, body) == (200, b'{"predictions":[3.5]}')
        assert conn.sock is first_sock
    finally:
        conn.close()


def test_gzip_bomb_stops_at_the_body_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    produced: list[int] = []
    real = zlib.decompressobj

    class Spy:  # records how much the server inflates
        def __init__(self, *args: object) -> None:
            self._d = real(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self._d, name)

    monkeypatch.setattr(zlib, "decompressobj", Spy)
    with ServerThread(FakeCore(), max_body_bytes=1 << 16) as s:
        limit = s.server.max_body_bytes
        at_limit = b'{"instances": [1.0]}'.ljust(limit)
        status, _, _ = http(s.port, "POST", "/v1/models/half:predict", gzip.compress(at_limit),
                            headers={"Content-Encoding": "gzip"})
        assert status == 200  # the limit applies to the inflated size, and a body at the limit passes
        bomb = gzip.compress(b" " * (200 * limit), compresslevel=9)  # ~13 MB inflated from ~13 KB
        assert len(bomb) < limit
        produced.clear()
        data = _exchange(s.port, b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb)
        assert data.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in data
        assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {"error": f"Request body is larger than the limit of {limit} bytes"}
        assert sum(produced) <= limit + 1  # inflating stopped one byte past the limit


def test_a_refusal_is_answered_after_the_requests_before_it(srv) -> None:
    """``GET ok`` then garbage in one packet: the GET gets its 200, then the 400, then the close."""
    data = _exchange(srv.port, b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\nBOGUS\r\n\r\n")
    assert _bodies(data) == [(200, b'{"status":"alive"}'), (400, b'{"error":"Malformed HTTP request"}')]
    # behind a request still running, and for an oversize body announced after it
    core = FakeCore()
    core.slow_seconds = 0.3
    with ServerThread(core, max_body_bytes=1000) as s:
        body = b'{"instances": [2.0]}'
        data = _exchange(s.port, b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         b"POST /v1/models/half:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
                         % (len(body), body))
        answers = _bodies(data)
        assert [a[0] for a in answers] == [200, 413]
        assert answers[0][1] == b'{"predictions":[3.0]}'
        assert data.count(b"Connection: close") == 1


def test_lone_surrogates_are_refused_and_no_body_holds_invalid_utf8(srv) -> None:
    raw = b'{"signature_name": "nope\\ud800", "instances": [1.0]}'
    status, _, body = http(srv.port, "POST", "/v1/models/half:predict", raw)
    assert status == 400
    assert json.loads(body.decode("utf-8")) == {
        "error": "JSON Parse error: The surrogate pair in string is invalid. at offset: 24"}
    status, _, body = http(srv.port, "POST", "/v1/models/half:predict", b'{"instances": [Inf, -Inf, -NaN]}')
    assert (status, body) == (200, b'{"predictions":[Infinity,-Infinity,NaN]}')


def test_head_and_http10(srv) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /v1/health/live HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk  # HTTP/1.0 without keep-alive: the server closes
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b'{"status":"alive"}')
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"GET /v1/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        data = s.recv(65536)
        assert b"Connection: keep-alive\r\n" in data and data.endswith(b'{"status":"alive"}')
        s.sendall(b"GET /v1/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # same connection
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
    conn = httpc.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("HEAD", "/v1/health/live")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"" and int(resp.getheader("Content-Length")) > 0
    conn.close()


def test_internal_error_is_500_without_details(srv, caplog) -> None:
    with caplog.at_level("ERROR", logger="teeserve.serving.rest"):
        status, doc = j(srv, "POST", "/v1/models/broken:predict", {"instances": [1.0]})
    assert (status, doc) == (500, {"error": "Internal error"})
    assert any("secret internal detail" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_timeout_504() -> None:
    core = FakeCore()
    core.slow_seconds = 5
    with ServerThread(core, timeout_ms=200) as s:
        start = time.monotonic()
        status, _, body = http(s.port, "POST", "/v1/models/slow:predict", b'{"instances": [1.0]}')
        assert time.monotonic() - start < 4
        assert status == 504
        assert json.loads(body) == {"error": "Deadline exceeded: the request did not finish within 200 ms"}
        # a timed-out request does not wedge the server
        assert http(s.port, "GET", "/v1/health/live")[0] == 200


def test_cors_headers_only_when_enabled(srv) -> None:
    assert "access-control-allow-origin" not in http(srv.port, "GET", "/v1/health/live")[1]
    with ServerThread(FakeCore(), enable_cors=True) as s:
        headers = http(s.port, "GET", "/v1/models/half")[1]
        assert headers["access-control-allow-origin"] == "*"
        assert headers["access-control-allow-methods"] == "POST, GET"


def test_large_body_decoded_on_thread_pool() -> None:
    """Bodies above ``offload_bytes`` go through the executor (``--rest_api_num_threads``)."""
    core = FakeCore()
    with ServerThread(core, num_threads=2, offload_bytes=100) as s:
        seen: list[str] = []
        executor = s.server.executor
        original = executor.submit

        def spy(fn, *args, **kwargs):
            seen.append(threading.current_thread().name)
            return original(fn, *args, **kwargs)

        executor.submit = spy  # type: ignore[method-assign]
        body = json.dumps({"instances": [[float(i) for i in range(64)]] * 3}).encode()
        status, _, data = http(s.port, "POST", "/v1/models/digits:predict", body)
        assert status == 200 and len(json.loads(data)["predictions"]) == 3
        assert len(seen) == 3  # parse, convert to arrays, encode the (larger than offload_bytes / 4) output
        http(s.port, "POST", "/v1/models/half:predict", b'{"inputs": [1.0]}')  # small: stays on the loop
        assert len(seen) == 3


# --- health, readiness, graceful close -------------------------------------------------------------------


def test_readiness_flips() -> None:
    core = FakeCore()
    core.ready = False
    with ServerThread(core) as s:
        status, _, body = http(s.port, "GET", "/v1/health/ready")
        assert status == 503 and "not ready" in json.loads(body)["error"]
        assert http(s.port, "GET", "/v1/health/live")[0] == 200
        core.ready = True
        status, _, body = http(s.port, "GET", "/v1/health/ready")
        assert (status, body) == (200, b'{"status":"ready"}')
        core.ready = False
        assert http(s.port, "GET", "/v1/health/ready")[0] == 503
        core.ready = True
        s.handler.draining = True  # what close() and the server's SIGTERM handling set first
        status, _, body = http(s.port, "GET", "/v1/health/ready")
        assert (status, json.loads(body)) == (503, {"error": "Server is shutting down"})
        assert http(s.port, "GET", "/v1/health/live")[0] == 200


def test_health_answers_while_a_model_is_busy() -> None:
    core = FakeCore()
    core.slow_seconds = 1.5
    with ServerThread(core) as s:
        t = threading.Thread(target=http, args=(s.port, "POST", "/v1/models/slow:predict", b'{"instances": [1.0]}'))
        t.start()
        time.sleep(0.2)
        start = time.monotonic()
        assert http(s.port, "GET", "/v1/health/ready")[0] == 200
        assert http(s.port, "GET", "/v1/health/live")[0] == 200
        assert time.monotonic() - start < 1.0
        t.join()


def test_close_finishes_in_flight_requests() -> None:
    core = FakeCore()
    core.slow_seconds = 0.8
    s = ServerThread(core)
    results: list[tuple[int, bytes]] = []

    def slow() -> None:
        status, headers, body = http(s.port, "POST", "/v1/models/slow:predict", b'{"instances": [2.0]}')
        results.append((status, body))
        results.append((0, headers.get("connection", "").encode()))

    idle = httpc.HTTPConnection("127.0.0.1", s.port, timeout=10)
    http(s.port, "GET", "/v1/health/live", conn=idle)  # an idle keep-alive connection
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    closer = threading.Thread(target=s.stop, kwargs={"grace": 5})
    closer.start()
    time.sleep(0.1)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    t.join(10)
    closer.join(10)
    assert results[0] == (200, b'{"predictions":[3.0]}')
    assert results[1] == (0, b"close")
    idle.close()


# --- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_material():
    from teeserve.tlsmaterial import SSLConfig, issue_material, server_ssl_context

    issued = issue_material(server_cn="localhost", client_cn="client.test", server_ips=["127.0.0.1"])
    cfg = SSLConfig(server_key=issued.server_key.decode(), server_cert=issued.server_cert.decode(),
                    custom_ca=issued.ca_cert.decode(), client_verify=True)
    return issued, server_ssl_context(cfg)


def _client_context(issued, tmp_path: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=issued.ca_cert.decode())
    if with_cert:
        cert, key = tmp_path / "client.pem", tmp_path / "client.key"
        cert.write_bytes(issued.client_cert)
        key.write_bytes(issued.client_key)
        ctx.load_cert_chain(cert, key)
    return ctx


def test_https_with_mutual_tls(tls_material, tmp_path) -> None:
    issued, server_ctx = tls_material
    with ServerThread(FakeCore(), ssl_context=server_ctx) as s:
        conn = httpc.HTTPSConnection("127.0.0.1", s.port, context=_client_context(issued, tmp_path, True), timeout=10)
        try:
            for _ in range(2):  # keep-alive over TLS
                status, _, body = http(s.port, "POST", "/v1/models/half:predict", b'{"instances": [4.0]}', conn=conn)
                assert (status, body) == (200, b'{"predictions":[5.0]}')
        finally:
            conn.close()

        # no client certificate: the handshake is refused
        no_cert = _client_context(issued, tmp_path, False)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
                with no_cert.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert tls.recv(1024) == b""  # TLS 1.3 reports the refusal on the first read
                    raise ssl.SSLError("closed without a response")

        # plaintext HTTP on the TLS port gets nothing useful
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
            raw.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = raw.recv(1024)
            except ConnectionResetError:
                data = b""
            assert not data.startswith(b"HTTP/1.1 200")

        # a client certificate from another CA is refused as well
        from teeserve.tlsmaterial import issue_material

        other = issue_material(server_cn="localhost", client_cn="mallory")
        ctx = ssl.create_default_context(cadata=issued.ca_cert.decode())
        (tmp_path / "m.pem").write_bytes(other.client_cert)
        (tmp_path / "m.key").write_bytes(other.client_key)
        ctx.load_cert_chain(tmp_path / "m.pem", tmp_path / "m.key")
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert tls.recv(1024) == b""
                    raise ssl.SSLError("closed without a response")
        # and the server is still serving
        conn = httpc.HTTPSConnection("127.0.0.1", s.port, context=_client_context(issued, tmp_path, True), timeout=10)
        assert http(s.port, "GET", "/v1/health/ready", conn=conn)[0] == 200
        conn.close()


# --- Prometheus -------------------------------------------------------------------------------------------


def _samples(port: int, path: str = MON) -> dict[tuple[str, tuple], float]:
    status, headers, body = http(port, "GET", path)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_counts_requests() -> None:
    with ServerThread(FakeCore(), monitoring_path=MON) as s:
        for _ in range(3):
            http(s.port, "POST", "/v1/models/half:predict", b'{"instances": [1.0]}')
        http(s.port, "POST", "/v1/models/half:predict", b'{"instances": "x"}')
        http(s.port, "POST", "/v1/models/nope-123:predict", b'{"instances": [1.0]}')
        samples = _samples(s.port)
        key = ":tensorflow:serving:request_count"
        assert samples[(key, (("model_name", "half"), ("status", "OK")))] == 3
        assert samples[(key, (("model_name", "half"), ("status", "INVALID_ARGUMENT")))] == 1
        # an unknown model name from the network does not become a label value
        assert samples[(key, (("model_name", "<unknown>"), ("status", "NOT_FOUND")))] == 1
        assert not any("nope-123" in str(k) for k in samples)
        lat = (("API", "Predict"), ("entrypoint", "REST"), ("model_name", "half"))
        assert samples[(":tensorflow:serving:request_latency_count", lat)] == 4
        assert samples[("teeserve_requests_total", (("api", "Predict"), ("code", "OK"), ("model_name", "half"),
                                                    ("protocol", "REST")))] == 3


def test_prometheus_only_when_enabled() -> None:
    with ServerThread(FakeCore()) as s:
        assert http(s.port, "GET", MON)[0] == 404
    with ServerThread(FakeCore(), monitoring_path="/metrics") as s:
        assert http(s.port, "GET", "/metrics")[0] == 200
        assert http(s.port, "GET", MON)[0] == 404


def test_a_bug_outside_the_model_apis_is_still_a_json_500() -> None:
    with ServerThread(FakeCore(), monitoring_path=MON) as s:
        def broken_render():
            raise RuntimeError("bug in a collector")

        s.metrics.render = broken_render
        status, headers, body = http(s.port, "GET", MON)
        assert (status, json.loads(body)) == (500, {"error": "Internal error"})
        assert http(s.port, "GET", "/v1/health/live")[0] == 200
