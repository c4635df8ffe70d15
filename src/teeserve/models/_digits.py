"""The digits demo model: a small CNN trained on scikit-learn's bundled 8x8 digits.

Strategy: the network is one pure function of its weights (``_forward``), used twice: eagerly to
train (GradientTape + Keras' Adam, seeded initialisers, a seeded shuffle: no global seeds are set),
then inside a ``tf.compat.v1`` graph to export. The export uses the TF1 SavedModel builder because
TF2's ``tf.saved_model.save`` writes every signature with method ``tensorflow/serving/predict``
(hard-coded in ``save.py``; tensorflow#38081), so it cannot produce the ``classify`` and
``regress`` signatures that TensorFlow Serving's Classify/Regress/MultiInference APIs require.
The trained weights are variables (``variables/``), loaded by feeding their initial values, so they
appear once on disk, not also as constants in ``saved_model.pb``.

Signatures (all in meta graph ``serve``):

- ``serving_default`` (predict): ``images`` float32 [-1, 8, 8] (pixels 0..16) ->
  ``probabilities`` float32 [-1, 10], ``classes`` int64 [-1]
- ``classify`` (``tensorflow/serving/classify``): ``inputs`` string [-1] (serialized tf.Example with
  float feature ``pixels`` of length 64) -> ``classes`` string [-1, 10] (labels "0".."9"),
  ``scores`` float32 [-1, 10]
- ``regress`` (``tensorflow/serving/regress``): ``inputs`` (as above) -> ``outputs`` float32 [-1]
  (the predicted digit as a number)

``classify`` and ``regress`` share one input tensor, as MultiInference requires.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import UsageError
from ._convert import DEFAULT_SIGNATURE, SERVE_TAG, _run_saved_model_v1, onnx_from_saved_model, run_onnx
from ._errors import ModelError
from ._images import digits_input_to_png
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

__all__ = ["make_digits", "check_model_name", "load_digits_split", "WARMUP_RELPATH", "PIXELS_FEATURE"]

WARMUP_RELPATH = Path("assets.extra") / "tf_serving_warmup_requests"
PIXELS_FEATURE = "pixels"
NUM_CLASSES = 10
TEST_FRACTION = 0.2
EPOCHS = 20
BATCH = 32
LEARNING_RATE = 3e-3
SAMPLES_PER_DIGIT = 2
WARMUP_BATCHES = (1, 2, 4)

# name -> shape; the order fixes which seed each initialiser gets
_PARAMS: dict[str, tuple[int, ...]] = {
    "conv1/kernel": (3, 3, 1, 16),
    "conv1/bias": (16,),
    "conv2/kernel": (3, 3, 16, 32),
    "conv2/bias": (32,),
    "dense1/kernel": (4 * 4 * 32, 64),
    "dense1/bias": (64,),
    "logits/kernel": (64, NUM_CLASSES),
    "logits/bias": (NUM_CLASSES,),
}

Log = Callable[[str], None]


def _forward(tf: Any, p: dict[str, Any], images: Any) -> Any:
    """Logits for a batch of 8x8 digits with pixel values 0..16."""
    x = tf.reshape(images * (1.0 / 16.0), [-1, 8, 8, 1])
    x = tf.nn.relu(tf.nn.conv2d(x, p["conv1/kernel"], 1, "SAME") + p["conv1/bias"])
    x = tf.nn.relu(tf.nn.conv2d(x, p["conv2/kernel"], 2, "SAME") + p["conv2/bias"])  # 4x4x32
    x = tf.reshape(x, [-1, 4 * 4 * 32])
    x = tf.nn.relu(tf.matmul(x, p["dense1/kernel"]) + p["dense1/bias"])
    return tf.matmul(x, p["logits/kernel"]) + p["logits/bias"]


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (bundled, no download) as float32 [n, 8, 8] / int64, split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    labels = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def _train(tf: Any, x: np.ndarray, y: np.ndarray, seed: int, progress: bool) -> dict[str, np.ndarray]:
    import keras
    from tqdm import tqdm

    params = {}
    for i, (name, shape) in enumerate(_PARAMS.items()):
        if name.endswith("/bias"):
            init = keras.initializers.Zeros()
        else:
            init = keras.initializers.HeNormal(seed=seed * 100 + i)
        params[name] = tf.Variable(init(shape), name=name.replace("/", "_"))
    variables = list(params.values())
    optimizer = keras.optimizers.Adam(LEARNING_RATE)

    @tf.function(reduce_retracing=True)
    def step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = _forward(tf, params, xb)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    bar = tqdm(range(EPOCHS), desc="training digits CNN", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = rng.permutation(len(x))
        for i in range(0, len(order) - BATCH + 1, BATCH):  # full batches only: one trace
            batch = order[i : i + BATCH]
            loss = step(x[batch], y[batch])
        bar.set_postfix(loss=f"{float(loss):.4f}")
    return {name: v.numpy() for name, v in params.items()}


def _export(tf: Any, weights: dict[str, np.ndarray], target: Path) -> None:
    """Write the trained weights as a TF1-style SavedModel with predict, classify and regress signatures."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        params = {
            name: v1.get_variable(
                name, shape=value.shape, dtype=tf.float32, initializer=v1.zeros_initializer()
            )
            for name, value in weights.items()
        }
        images = v1.placeholder(tf.float32, [None, 8, 8], name="images")
        logits = _forward(tf, params, images)
        probabilities = tf.nn.softmax(logits, name="probabilities")
        classes = tf.argmax(logits, axis=1, output_type=tf.int64, name="classes")

        examples = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(examples, {PIXELS_FEATURE: tf.io.FixedLenFeature([64], tf.float32)})
        ex_logits = _forward(tf, params, tf.reshape(features[PIXELS_FEATURE], [-1, 8, 8]))
        scores = tf.nn.softmax(ex_logits, name="scores")
        labels = tf.constant([[str(i).encode() for i in range(NUM_CLASSES)]], name="label_names")
        label_table = tf.tile(labels, tf.stack([tf.shape(ex_logits)[0], 1]), name="labels")
        digit = tf.cast(tf.argmax(ex_logits, axis=1), tf.float32, name="digit")

        signatures = {
            DEFAULT_SIGNATURE: v1.saved_model.predict_signature_def(
                {"images": images}, {"probabilities": probabilities, "classes": classes}
            ),
            "classify": v1.saved_model.classification_signature_def(examples, label_table, scores),
            "regress": v1.saved_model.regression_signature_def(examples, digit),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(
                [v.initializer for v in params.values()],
                {params[name].initial_value: value for name, value in weights.items()},
            )
            builder = v1.saved_model.Builder(str(target))
            builder.add_meta_graph_and_variables(
                sess, [SERVE_TAG], signature_def_map=signatures, strip_default_attrs=True, clear_devices=True
            )
            builder.save()


def _write_warmup(tf: Any, path: Path, name: str, images: np.ndarray) -> None:
    """TensorFlow Serving's warmup file: a TFRecord of PredictionLog, one PredictRequest per record."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    start = 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in WARMUP_BATCHES:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = name
            request.model_spec.signature_name = DEFAULT_SIGNATURE
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(images[start : start + batch]))
            start += batch
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def make_digits(
    out_dir: str | os.PathLike[str],
    *,
    name: str = "digits",
    samples_out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    version: int = 1,
    onnx: bool = True,
    force: bool = False,
    progress: bool = False,
    log: Log | None = None,
) -> DemoModel:
    """Train the digits CNN and write it in TensorFlow Serving's layout.

    Writes ``out_dir/<name>/<version>/`` (SavedModel with ``serving_default``, ``classify`` and
    ``regress`` signatures and a warmup file in ``assets.extra/``), ``out_dir/<name>-onnx/<version>/
    model.onnx`` (same input/output names as ``serving_default``) and PNG samples
    ``digit_<label>_<n>.png`` from the held-out set into ``samples_out`` (default: ``samples/`` next
    to ``out_dir``). Takes 10-20 s on two cores.

    Raises:
        OutputExists: an output exists and ``force`` is false (nothing is written).
        ModelError: training or export failed (nothing is written).
    """
    log = log or (lambda _msg: None)
    started = time.monotonic()
    out = Path(out_dir)
    check_model_name(name)
    sm_target = version_dir(out / name, version)
    onnx_target = version_dir(out / f"{name}-onnx", version)
    default_samples = Path(os.path.abspath(out)).parent / "samples"
    samples_dir = Path(samples_out) if samples_out is not None else default_samples
    sample_names = [f"digit_{d}_{n}.png" for d in range(NUM_CLASSES) for n in range(SAMPLES_PER_DIGIT)]
    for target in [sm_target, *([onnx_target] if onnx else []), *(samples_dir / s for s in sample_names)]:
        check_absent(target, force)

    tf = import_tensorflow()
    with staging_dir(out) as stage, quiet_tensorflow():  # made first: fail before training, not after
        x_train, x_test, y_train, y_test = load_digits_split(seed)
        log(f"digits data: {len(x_train)} training / {len(x_test)} held-out images (bundled with sklearn)")
        t0 = time.monotonic()
        weights = _train(tf, x_train, y_train, seed, progress)
        count = sum(w.size for w in weights.values())
        log(f"trained the CNN ({count} parameters) in {time.monotonic() - t0:.1f} s")

        staged_sm = stage / "saved_model"
        _export(tf, weights, staged_sm)
        _write_warmup(tf, staged_sm / WARMUP_RELPATH, name, x_test)
        predicted = _run_saved_model_v1(tf, staged_sm, DEFAULT_SIGNATURE, {"images": x_test})
        accuracy = float(np.mean(predicted["classes"] == y_test))
        log(f"SavedModel held-out accuracy: {accuracy:.4f} ({len(y_test)} images)")
        if accuracy < 0.9:
            raise ModelError(f"the digits model reached only {accuracy:.3f} held-out accuracy; not written")

        onnx_accuracy = diff = None
        staged_onnx = stage / "onnx"
        if onnx:
            data, comparison = onnx_from_saved_model(staged_sm, sample_inputs={"images": x_test}, log=log)
            onnx_accuracy = float(np.mean(run_onnx(data, {"images": x_test})["classes"] == y_test))
            diff = comparison.max_abs_diff if comparison else None
            log(f"ONNX held-out accuracy: {onnx_accuracy:.4f}")
            staged_onnx.mkdir()
            (staged_onnx / "model.onnx").write_bytes(data)

        # samples: the first held-out images of each digit that the exported model gets right
        pngs: dict[str, bytes] = {}
        for digit in range(NUM_CLASSES):
            picks = np.flatnonzero((y_test == digit) & (predicted["classes"] == y_test))[:SAMPLES_PER_DIGIT]
            for n, index in enumerate(picks):
                pngs[f"digit_{digit}_{n}.png"] = digits_input_to_png(x_test[index])

        samples: list[Path] = []
        try:
            with all_or_nothing(force, log) as outputs:  # a failure takes back what went in before it
                for fname, png in pngs.items():
                    outputs.write(samples_dir / fname, png)
                    samples.append(samples_dir / fname)
                outputs.install(staged_sm, sm_target)
                if onnx:
                    outputs.install(staged_onnx, onnx_target)
        except OSError as exc:
            raise output_error(exc) from exc
    return DemoModel(
        name=name,
        saved_model_dir=sm_target,
        onnx_path=onnx_target / "model.onnx" if onnx else None,
        warmup_file=sm_target / WARMUP_RELPATH,
        samples=tuple(samples),
        accuracy=accuracy,
        onnx_accuracy=onnx_accuracy,
        onnx_max_abs_diff=diff,
        seconds=time.monotonic() - started,
    )


def check_model_name(name: str) -> None:
    """A model name is one plain folder name (it becomes ``<out>/<name>/``)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise UsageError(f"model name {name!r} must be a plain folder name")
