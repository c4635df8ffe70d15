"""The vendored TensorFlow Serving protos: wire-identical to the official stubs, no clash, no TF import."""

from __future__ import annotations

import subprocess
import sys

from google.protobuf import text_format

from teeserve._proto import SERVICES, pb


def test_predict_request_is_wire_identical_to_official_stubs() -> None:
    from tensorflow_serving.apis import predict_pb2  # official package, loaded alongside ours

    ours = pb.PredictRequest()
    ours.model_spec.name = "digits"
    ours.model_spec.version.value = 3
    t = ours.inputs["images"]
    t.dtype = 1  # DT_FLOAT
    t.tensor_shape.dim.add(size=2)
    t.float_val.extend([1.5, -2.0])
    data = ours.SerializeToString()
    official = predict_pb2.PredictRequest.FromString(data)
    assert official.model_spec.name == "digits"
    assert official.model_spec.version.value == 3
    assert list(official.inputs["images"].float_val) == [1.5, -2.0]
    assert official.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)


def test_services_match_tensorflow_serving() -> None:
    assert set(SERVICES["tensorflow.serving.PredictionService"]) == {
        "Classify", "Regress", "Predict", "MultiInference", "GetModelMetadata"}
    assert set(SERVICES["tensorflow.serving.ModelService"]) == {"GetModelStatus", "HandleReloadConfigRequest"}


def test_config_messages_parse_in_text_format() -> None:
    cfg = text_format.Parse('server_key: "k"\nserver_cert: "c"\nclient_verify: true\n', pb.SSLConfig())
    assert cfg.client_verify and cfg.server_key == "k"
    bp = text_format.Parse("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8\n",
                           pb.BatchingParameters())
    assert bp.max_batch_size.value == 8 and list(bp.allowed_batch_sizes) == [4, 8]
    mc = text_format.Parse('prometheus_config { enable: true path: "/m" }', pb.MonitoringConfig())
    assert mc.prometheus_config.path == "/m"


def test_importing_protos_does_not_import_tensorflow() -> None:
    code = "import sys, teeserve._proto as p; p.pb.PredictRequest(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
