"""ResNet-50 v1.5 (random weights): architecture without export; the full export is marked slow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from teeserve import models


# torchvision/TF-official ResNet-50 (1000 classes, convolutions without bias): 25,557,032 trainable
# parameters; the 1001-class head of the reference's resnet50-v15-fp32 adds 2048 weights + 1 bias.
TRAINABLE_1001 = 25_557_032 + 2_049
BN_MOVING_STATS = 2 * 26_560  # mean and variance for the 26,560 batch-norm channels


@pytest.fixture(scope="module")
def resnet(tf):
    return models.build_resnet50(seed=0, calibrate=False)


def test_parameter_count(resnet) -> None:
    trainable = sum(int(np.prod(w.shape)) for w in resnet.trainable_weights)
    assert trainable == TRAINABLE_1001
    assert resnet.count_params() == TRAINABLE_1001 + BN_MOVING_STATS  # ~25.6M
    assert round(resnet.count_params() / 1e6, 1) == 25.6


def test_input_output(resnet) -> None:
    assert resnet.input.name == "input" or resnet.inputs[0].name == "input"
    assert tuple(resnet.input.shape) == (None, 224, 224, 3) and resnet.input.dtype == "float32"
    assert resnet.output.shape == (None, 1001)
    assert resnet.layers[-1].name == "predict" and resnet.layers[-1].__class__.__name__ == "Softmax"


def test_v15_stride_placement(resnet) -> None:
    """v1.5: the stride 2 of a downsampling bottleneck is in its 3x3 conv; v1 had it in the first 1x1."""
    blocks = {1: 3, 2: 4, 3: 6, 4: 3}
    for stage, count in blocks.items():
        for block in range(1, count + 1):
            name = f"stage{stage}_block{block}"
            conv1, conv2, conv3 = (resnet.get_layer(f"{name}_conv{i}") for i in (1, 2, 3))
            downsample = stage > 1 and block == 1
            assert conv1.kernel_size == (1, 1) and conv1.strides == (1, 1), name
            assert conv2.kernel_size == (3, 3) and conv2.strides == ((2, 2) if downsample else (1, 1)), name
            assert conv3.kernel_size == (1, 1) and conv3.strides == (1, 1), name
            assert not conv1.use_bias and not conv2.use_bias and not conv3.use_bias
            if block == 1:
                assert resnet.get_layer(f"{name}_proj").strides == ((2, 2) if downsample else (1, 1))
        side = {1: 56, 2: 28, 3: 14, 4: 7}[stage]
        out = resnet.get_layer(f"stage{stage}_block{count}_out").output
        assert out.shape == (None, side, side, 256 * 2 ** (stage - 1))
    assert sum(1 for layer in resnet.layers if layer.__class__.__name__ == "Conv2D") == 53


def test_weights_are_seeded(tf) -> None:
    a = models.build_resnet50(seed=0, calibrate=False).get_layer("stage2_block1_conv2").kernel.numpy()
    b = models.build_resnet50(seed=0, calibrate=False).get_layer("stage2_block1_conv2").kernel.numpy()
    c = models.build_resnet50(seed=1, calibrate=False).get_layer("stage2_block1_conv2").kernel.numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
def test_make_resnet50_end_to_end(tf, tmp_path: Path, saved_model_proto) -> None:
    """The whole --resnet50 path: freeze, convert as the reference does, ONNX, warmup (~1.5-2 min)."""
    messages: list[str] = []
    result = models.make_resnet50(
        tmp_path / "models", frozen_graph_out=tmp_path / "resnet50.pb", log=messages.append
    )
    assert result.saved_model_dir == tmp_path / "models" / "resnet50-v15-fp32" / "1"
    assert result.onnx_path == tmp_path / "models" / "resnet50-v15-fp32-onnx" / "1" / "model.onnx"
    assert sorted(os.listdir(tmp_path / "models")) == ["resnet50-v15-fp32", "resnet50-v15-fp32-onnx"]
    (meta,) = saved_model_proto(result.saved_model_dir).meta_graphs
    sig = meta.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 224, 224, 3]
    assert [d.size for d in sig.outputs["predict"].tensor_shape.dim] == [-1, 1001]
    assert result.frozen_graph.stat().st_size > 90e6  # all 25.6M float32 weights
    assert any("verified ONNX" in m for m in messages)

    pixels = np.random.default_rng(7).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
    serve = tf.saved_model.load(str(result.saved_model_dir)).signatures["serving_default"]
    want = serve(input=tf.constant(pixels))["predict"].numpy()
    np.testing.assert_allclose(want.sum(axis=1), 1.0, rtol=1e-4)
    assert want.max() < 0.9  # calibrated batch norm: not a saturated one-hot softmax
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["predict"]
    (got,) = session.run(["predict"], {"input": pixels})
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)

    from tensorflow_serving.apis import prediction_log_pb2

    (record,) = [r.numpy() for r in tf.data.TFRecordDataset(str(result.warmup_file))]
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    assert request.model_spec.name == "resnet50-v15-fp32"
    assert tf.make_ndarray(request.inputs["input"]).shape == (1, 224, 224, 3)
