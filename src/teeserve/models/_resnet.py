"""ResNet-50 v1.5 with random weights: a stand-in for the reference's ``resnet50-v15-fp32``.

Strategy: no weights can be downloaded here, so the network is built with seeded random weights; it
has the reference model's architecture, size (25.6M parameters), input and output, which is what
serving, encryption and benchmarks depend on. v1.5 differs from the original v1 only in the
downsampling bottlenecks: the stride 2 sits in the 3x3 convolution, not in the first 1x1 (as in
NVIDIA's and MLPerf's ResNet-50 v1.5 and TensorFlow's official model). Convolutions have no bias
(batch norm follows each); the classifier has 1001 classes (class 0 is "background") like the
TF-slim/MLPerf ``resnet50_v1.pb`` the reference serves.

With random weights and unit batch-norm statistics the activations grow block by block and the
softmax saturates to one-hot. So the batch-norm statistics are set once from a batch of random
pixels (uniform 0..255, what the reference client sends): outputs are then spread-out probabilities,
which makes the ONNX-vs-TensorFlow comparison meaningful.

The export follows the reference's own path: the Keras model is frozen into a GraphDef with input
``input`` and output ``predict`` (optionally written as ``.pb``, the file the reference downloads),
then converted exactly as ``teeserve model convert --frozen-graph`` does (all weights end up as
constants in ``saved_model.pb``; ``variables/`` is empty, as in the reference).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._convert import export_graph_def, onnx_from_saved_model
from ._digits import WARMUP_RELPATH, check_model_name
from ._layout import (
    all_or_nothing,
    check_absent,
    import_tensorflow,
    output_error,
    quiet_tensorflow,
    staging_dir,
    version_dir,
)
from ._types import DemoModel

__all__ = ["build_resnet50", "make_resnet50", "RESNET50_CLASSES", "RESNET50_INPUT", "RESNET50_OUTPUT"]

RESNET50_CLASSES = 1001
RESNET50_INPUT = "input"
RESNET50_OUTPUT = "predict"
IMAGE_SIZE = 224
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks); output width = 4x
BN_EPSILON = 1.001e-5
CALIBRATION_BATCH = 4

Log = Callable[[str], None]


def build_resnet50(*, seed: int = 0, num_classes: int = RESNET50_CLASSES, calibrate: bool = True) -> Any:
    """The ResNet-50 v1.5 Keras model (NHWC float32 [-1, 224, 224, 3] -> softmax [-1, num_classes]).

    Layer names: ``stem_conv``; ``stage{s}_block{b}_conv{1,2,3}`` (1x1, 3x3, 1x1) with ``_bn{1,2,3}``;
    ``stage{s}_block1_proj`` for the projection shortcut; ``logits``; output layer ``predict``.
    Weights are drawn from seeded initialisers (no global random state is touched).
    """
    import_tensorflow()
    import keras
    from keras import layers

    counter = iter(range(seed * 1000, seed * 1000 + 1000))

    def conv(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        padding = "same"
        if stride > 1 and kernel > 1:  # explicit symmetric padding, as TF's official ResNet does
            x = layers.ZeroPadding2D((kernel - 1) // 2, name=f"{name}_pad")(x)
            padding = "valid"
        return layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_initializer=keras.initializers.HeNormal(seed=next(counter)),
            name=name,
        )(x)

    def bn(x: Any, name: str) -> Any:
        # momentum 0: a calibration pass in training mode sets the statistics to that batch's
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.0, name=name)(x)

    def bottleneck(x: Any, width: int, stride: int, name: str, project: bool) -> Any:
        shortcut = x
        if project:
            shortcut = bn(conv(x, 4 * width, 1, stride, f"{name}_proj"), f"{name}_proj_bn")
        y = layers.ReLU(name=f"{name}_relu1")(bn(conv(x, width, 1, 1, f"{name}_conv1"), f"{name}_bn1"))
        y = layers.ReLU(name=f"{name}_relu2")(bn(conv(y, width, 3, stride, f"{name}_conv2"), f"{name}_bn2"))
        y = bn(conv(y, 4 * width, 1, 1, f"{name}_conv3"), f"{name}_bn3")
        return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="float32", name=RESNET50_INPUT)
    x = conv(inputs, 64, 7, 2, "stem_conv")
    x = layers.ReLU(name="stem_relu")(bn(x, "stem_bn"))
    x = layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="stem_pool")(x)
    for s, (width, blocks) in enumerate(STAGES, start=1):
        for b in range(1, blocks + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            x = bottleneck(x, width, stride, f"stage{s}_block{b}", project=(b == 1))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(
        num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed=next(counter)), name="logits"
    )(x)
    outputs = layers.Softmax(name=RESNET50_OUTPUT)(x)
    model = keras.Model(inputs, outputs, name="resnet50_v15")
    if calibrate:
        rng = np.random.default_rng(seed)
        pixels = rng.uniform(0.0, 255.0, (CALIBRATION_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        model(pixels, training=True)
    return model


def _freeze(tf: Any, model: Any) -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name=RESNET50_INPUT)]
    )
    def serve(images: Any) -> Any:
        return tf.identity(model(images, training=False), name=RESNET50_OUTPUT)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    return frozen.graph.as_graph_def()


def _write_warmup(tf: Any, path: Path, name: str, pixels: np.ndarray) -> None:
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    request.inputs[RESNET50_INPUT].CopyFrom(tf.make_tensor_proto(pixels))
    with tf.io.TFRecordWriter(str(path)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def make_resnet50(
    out_dir: str | os.PathLike[str],
    *,
    name: str = "resnet50-v15-fp32",
    seed: int = 0,
    onnx: bool = True,
    version: int = 1,
    frozen_graph_out: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Log | None = None,
) -> DemoModel:
    """Write ResNet-50 v1.5 (random weights) as ``out_dir/<name>/<version>/`` and, with ``onnx``,
    ``out_dir/<name>-onnx/<version>/model.onnx``; signature ``serving_default``: ``input`` float32
    [-1, 224, 224, 3] -> ``predict`` float32 [-1, 1001] (softmax). A one-record warmup file (batch 1)
    goes to ``assets.extra/``. Takes 1.5-3 minutes on two cores, most of it in tf2onnx.

    Raises:
        OutputExists: an output exists and ``force`` is false (nothing is written).
        ModelError: conversion or verification failed (nothing is written).
    """
    log = log or (lambda _msg: None)
    started = time.monotonic()
    out = Path(out_dir)
    check_model_name(name)
    sm_target = version_dir(out / name, version)
    onnx_target = version_dir(out / f"{name}-onnx", version)
    frozen_path = Path(frozen_graph_out) if frozen_graph_out is not None else None
    for target in [sm_target, *([onnx_target] if onnx else []), *([frozen_path] if frozen_path else [])]:
        check_absent(target, force)

    tf = import_tensorflow()
    rng = np.random.default_rng(seed + 1)
    pixels = rng.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    diff = None
    with staging_dir(out) as stage:  # made first: fail before the slow part, not after
        with quiet_tensorflow():
            t0 = time.monotonic()
            model = build_resnet50(seed=seed)
            took = time.monotonic() - t0
            log(f"built ResNet-50 v1.5 ({model.count_params():,} parameters) in {took:.1f} s")
            t0 = time.monotonic()
            graph_def = _freeze(tf, model)
            log(f"froze the graph ({graph_def.ByteSize() / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
            del model
        staged_sm = stage / "saved_model"
        export_graph_def(
            graph_def, staged_sm, [RESNET50_INPUT], [RESNET50_OUTPUT], origin="resnet50", log=log
        )
        with quiet_tensorflow():
            _write_warmup(tf, staged_sm / WARMUP_RELPATH, name, pixels)
        staged_onnx = stage / "onnx"
        if onnx:
            data, comparison = onnx_from_saved_model(
                staged_sm, sample_inputs={RESNET50_INPUT: pixels}, log=log
            )
            diff = comparison.max_abs_diff if comparison else None
            staged_onnx.mkdir()
            (staged_onnx / "model.onnx").write_bytes(data)
        try:
            with all_or_nothing(force, log) as outputs:  # a failure takes back what went in before it
                outputs.install(staged_sm, sm_target)
                if onnx:
                    outputs.install(staged_onnx, onnx_target)
                if frozen_path is not None:
                    outputs.write(frozen_path, graph_def.SerializeToString())
        except OSError as exc:
            raise output_error(exc) from exc
    return DemoModel(
        name=name,
        saved_model_dir=sm_target,
        onnx_path=onnx_target / "model.onnx" if onnx else None,
        warmup_file=sm_target / WARMUP_RELPATH,
        frozen_graph=frozen_path,
        onnx_max_abs_diff=diff,
        seconds=time.monotonic() - started,
    )
