"""REST over the real ``ServingCore`` (fixtures from conftest.py: tiny ONNX and SavedModel "digits",
a TF1 classify/regress model), on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from test_rest_fakes import http  # noqa: E402

from teeserve.serving._metrics import Metrics  # noqa: E402
from teeserve.serving.rest import start_rest_server  # noqa: E402


@pytest.fixture()
def rest(loop_thread: Any):
    """``rest(core, **kwargs) -> port``: a REST server over ``core`` on the core's own event loop."""
    servers: list[Any] = []

    def start(core: Any, **kwargs: Any) -> int:
        kwargs.setdefault("metrics", Metrics(process_collector=False))
        server = loop_thread.run(start_rest_server(core, "127.0.0.1", 0, **kwargs))
        servers.append(server)
        return server.port

    yield start
    for s in servers:
        loop_thread.run(s.close(grace=2))


def post(port: int, path: str, doc: Any) -> tuple[int, Any]:
    status, _, body = http(port, "POST", path, json.dumps(doc))
    return status, json.loads(body)


def get(port: int, path: str) -> tuple[int, Any]:
    status, _, body = http(port, "GET", path)
    return status, json.loads(body)


def test_onnx_predict_status_metadata(core: Any, rest: Any, digits_reference: Any) -> None:
    metrics = Metrics(process_collector=False)
    port = rest(core, metrics=metrics, monitoring_path="/monitoring/prometheus/metrics")
    images = np.random.default_rng(3).random((2, 8, 8)).astype(np.float32)
    expected = digits_reference(images)

    status, doc = post(port, "/v1/models/digits:predict", {"instances": images.tolist()})
    assert status == 200, doc
    rows = doc["predictions"]
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected["probabilities"], rtol=1e-5)
    assert [r["classes"] for r in rows] == expected["classes"].tolist()

    status, doc = post(port, "/v1/models/digits/versions/1:predict", {"inputs": {"images": images[:1].tolist()}})
    assert status == 200, doc
    assert doc["outputs"]["classes"] == expected["classes"][:1].tolist()

    status, doc = get(port, "/v1/models/digits")
    assert status == 200
    assert doc["model_version_status"][0]["version"] == "1"
    assert doc["model_version_status"][0]["state"] == "AVAILABLE"
    assert doc["model_version_status"][0]["status"]["error_code"] == "OK"

    status, doc = get(port, "/v1/models/digits/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    sd = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sd["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert set(sd["outputs"]) == {"probabilities", "classes"}

    assert get(port, "/v1/health/ready")[0] == 200

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(http(port, "GET", "/monitoring/prometheus/metrics")[2].decode())
        for s in f.samples
    }
    assert samples[(":tensorflow:serving:request_count", (("model_name", "digits"), ("status", "OK")))] == 2


def test_onnx_request_errors(core: Any, rest: Any) -> None:
    port = rest(core)
    status, doc = post(port, "/v1/models/digits/versions/9:predict", {"instances": [[[0.0] * 8] * 8]})
    assert (status, doc) == (404, {"error": "Servable not found for request: Specific(digits, 9)"})
    status, doc = post(port, "/v1/models/other:predict", {"instances": [1.0]})
    assert (status, doc) == (404, {"error": "Servable not found for request: Latest(other)"})
    status, doc = post(port, "/v1/models/digits:predict", {"instances": [[1.0, 2.0]]})  # wrong shape
    assert status == 400 and doc["error"]
    status, doc = post(port, "/v1/models/digits:predict", {"instances": [["a"] * 8] * 1})
    assert status == 400 and "is not of expected type: float" in doc["error"]
    status, doc = post(port, "/v1/models/digits:predict", {"signature_name": "nope", "instances": [1.0]})
    assert (status, doc) == (400, {"error": 'Serving signature name: "nope" not found in signature def'})
    status, doc = get(port, "/v1/models/other")
    assert status == 404 and doc["error"]
    # classify / regress on a model with only a predict signature: INVALID_ARGUMENT with the reason
    for verb, what in (("classify", "classification"), ("regress", "regression")):
        status, doc = post(port, f"/v1/models/digits:{verb}", {"examples": [{"x": [1.0, 2.0]}]})
        assert (status, doc) == (400, {"error": f"Expected {what} signature method_name to be "
                                                f"tensorflow/serving/{verb}. Was: tensorflow/serving/predict"})
        status, doc = post(port, f"/v1/models/digits:{verb}", {"signature_name": "nope", "examples": [{"x": [1.0]}]})
        assert (status, doc) == (400, {"error": "No signature was found with the name: nope"})


@pytest.mark.slow
def test_savedmodel_classify_and_regress(make_core: Any, classify_model_dir: Path, rest: Any) -> None:
    core = make_core(classify_model_dir, name="examples")
    port = rest(core)
    status, doc = post(port, "/v1/models/examples:classify",
                       {"signature_name": "classify_x", "examples": [{"x": [1.0, 2.0]}, {"x": [3.0, 1.0]}]})
    assert status == 200, doc
    results = doc["results"]
    assert [[label for label, _ in row] for row in results] == [["neg", "pos"], ["neg", "pos"]]
    scores = np.array([[s for _, s in row] for row in results])
    e = np.exp(np.array([[1.0, 2.0], [3.0, 1.0]]))
    np.testing.assert_allclose(scores, e / e.sum(axis=1, keepdims=True), rtol=1e-5)

    status, doc = post(port, "/v1/models/examples:regress",
                       {"signature_name": "regress_x", "context": {"x": [0.5, 0.25]}, "examples": [{}]})
    # with a context, each example is merged with the context features (TF Serving's semantics)
    assert status == 200, doc
    assert doc == {"results": [0.75]}

    status, doc = post(port, "/v1/models/examples:predict", {"instances": [[1.0, 2.5]]})
    assert (status, doc) == (200, {"predictions": [3.5]})


# --- fuzzing against the real core -----------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_rest_fuzz import _check, _Client, _dumps, bodies  # noqa: E402

_REAL_PATHS = ["/v1/models/digits:predict", "/v1/models/digits/versions/1:predict",
               "/v1/models/digits/versions/2:predict", "/v1/models/digits/labels/stable:predict",
               "/v1/models/digits:classify", "/v1/models/digits:regress", "/v1/models/other:predict"]
_cells = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**65), 2**65) | st.booleans() \
    | st.text(max_size=3) | st.none()
_image = st.lists(st.lists(st.floats(-1e6, 1e6) | _cells, min_size=7, max_size=9), min_size=7, max_size=9)
_digits_docs = st.one_of(
    st.builds(lambda rows: {"instances": rows}, st.lists(_image, min_size=1, max_size=3)),
    st.builds(lambda rows: {"inputs": {"images": rows}}, st.lists(_image, min_size=0, max_size=3)),
    st.builds(lambda rows, sig: {"signature_name": sig, "instances": rows}, st.lists(_image, min_size=1, max_size=2),
              st.sampled_from(["", "serving_default", "nope"])),
)


@pytest.fixture()
def real_server(core: Any, rest: Any) -> Any:
    return _Client(rest(core, timeout_ms=10000))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(path=st.sampled_from(_REAL_PATHS), body=bodies | st.builds(_dumps, _digits_docs))
def test_fuzz_rest_bodies_against_the_real_core(real_server: Any, path: str, body: bytes) -> None:
    """test_rest_fuzz's property over the real core and ONNX Runtime (the validation of shapes and
    dtypes, the model run): a 2xx or a 4xx with an error message for any body, never a 5xx; a 200
    for a predict has one prediction per row sent."""
    status, data, content_type = real_server.post(path, body)
    _check(status, data, content_type)
    if status == 200 and path.endswith(":predict"):
        doc = json.loads(body)
        if "instances" in doc:
            assert len(json.loads(data)["predictions"]) == len(doc["instances"])
