"""Shared fixtures for the serving tests: tiny real models, encrypted copies, a running core.

Models (all deterministic; the ONNX and the SavedModel "digits" compute the same function):
    images float32 [-1, 8, 8] -> reshape [-1, 64] @ W(64x10) -> probabilities = softmax (float32 [-1, 10]),
                                                                  classes = argmax (int64 [-1])
The ``digits_reference`` fixture is the numpy version of that function: ``digits_reference(images, scale)``.

Fixtures:
    onnx_model_dir            base path of an ONNX "digits" model, version 1 (``<base>/1/model.onnx``)
    saved_model_dir           base path of a TF2 SavedModel "digits", version 1 (same math)
    classify_model_dir        base path of a TF1 SavedModel over tf.Examples with feature ``x`` (2 floats):
                              ``classify_x`` (classes ["neg", "pos"], scores = softmax(x)), ``regress_x``
                              (outputs = x0 + x1), and a predict ``serving_default`` (``x`` float32
                              [-1, 2] -> ``y`` = sum)
    wrap_key, keyring         a 16-byte wrap key and a KeyRing holding it as ``default``
    encrypted_onnx_model_dir, encrypted_saved_model_dir
                              the models above as Gramine protected files (bound to their own paths)
    make_onnx_model(version_dir, scale=1.0, marker=None)  factory: write one ONNX version
    onnx_bytes(scale=1.0, marker=None)                    factory: the ONNX model as bytes (never on disk)
    make_saved_model(version_dir, scale=1.0)              factory: write one SavedModel version
    loop_thread               an asyncio loop in a background thread: ``loop_thread.run(coro)``, and
                              ``loop_thread.call(fn)`` for the core's sync methods (they live on that loop)
    make_core(configs_or_base_path, name="digits", *, keyring=None, start=True, **ServingOptions fields)
                              -> ServingCore started on loop_thread (stopped at teardown); defaults: no
                              polling, no load retries
    core                      a started core serving the ONNX model as "digits"
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

T = TypeVar("T")


def digits_weights(scale: float = 1.0) -> np.ndarray:
    i = np.arange(64, dtype=np.float32)[:, None]
    j = np.arange(10, dtype=np.float32)[None, :]
    return ((((i * 7 + j * 3) % 11) - 5) / 10.0 * scale).astype(np.float32)


def digits_reference(images: np.ndarray, scale: float = 1.0) -> dict[str, np.ndarray]:
    logits = images.reshape(-1, 64).astype(np.float32) @ digits_weights(scale)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probabilities": (e / e.sum(axis=1, keepdims=True)).astype(np.float32),
            "classes": logits.argmax(axis=1).astype(np.int64)}


def onnx_model_bytes(scale: float = 1.0, marker: str | None = None) -> bytes:
    """The serialized ONNX "digits" model (``marker`` goes into its doc_string, verbatim)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(digits_weights(scale), name="W")
    shape = numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), name="flat_shape")
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["classes"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch"])],
        initializer=[w, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="teeserve-tests")
    model.ir_version = 8
    if marker:
        model.doc_string = marker
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_onnx_model(version_dir: str | os.PathLike[str], scale: float = 1.0, marker: str | None = None) -> Path:
    out = Path(version_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_model_bytes(scale, marker))
    return out / "model.onnx"


def write_saved_model(version_dir: str | os.PathLike[str], scale: float = 1.0) -> Path:
    import tensorflow as tf

    class Digits(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(digits_weights(scale))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8], tf.float32, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            logits = tf.matmul(tf.reshape(images, [-1, 64]), self.w)
            return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1)}

    m = Digits()
    tf.saved_model.save(m, os.fspath(version_dir), signatures={"serving_default": m.serve})
    return Path(version_dir)


def write_classify_model(version_dir: str | os.PathLike[str]) -> Path:
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        ser = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.io.parse_example(ser, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        scores = tf.nn.softmax(x, name="scores")
        classes = tf.tile(tf.constant([[b"neg", b"pos"]]), [tf.shape(x)[0], 1], name="classes")
        y = tf.reduce_sum(x, axis=1, name="y")
        xin = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x_in")
        y2 = tf.reduce_sum(xin, axis=1, name="y2")
        utils = tf.compat.v1.saved_model.signature_def_utils
        with tf.compat.v1.Session(graph=g) as sess:
            b = tf.compat.v1.saved_model.Builder(os.fspath(version_dir))
            b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "classify_x": utils.classification_signature_def(ser, classes, scores),
                "regress_x": utils.regression_signature_def(ser, y),
                "serving_default": utils.predict_signature_def({"x": xin}, {"y": y2}),
            })
            b.save()
    return Path(version_dir)


@pytest.fixture(scope="session", name="digits_reference")
def digits_reference_fixture() -> Callable[..., dict[str, np.ndarray]]:
    return digits_reference


@pytest.fixture(scope="session")
def make_onnx_model() -> Callable[..., Path]:
    return write_onnx_model


@pytest.fixture(scope="session")
def onnx_bytes() -> Callable[..., bytes]:
    return onnx_model_bytes


@pytest.fixture(scope="session")
def make_saved_model() -> Callable[..., Path]:
    return write_saved_model


@pytest.fixture(scope="session")
def onnx_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("onnx") / "digits"
    write_onnx_model(base / "1")
    return base


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("savedmodel") / "digits"
    write_saved_model(base / "1")
    return base


@pytest.fixture(scope="session")
def classify_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("classify") / "examples"
    write_classify_model(base / "1")
    return base


@pytest.fixture(scope="session")
def wrap_key() -> bytes:
    return bytes(range(0x40, 0x50))


@pytest.fixture()
def keyring(wrap_key: bytes) -> Any:
    from teeserve.serving._secrets import KeyRing

    return KeyRing({"default": wrap_key})


def _encrypt_base(src: Path, dst: Path, key: bytes) -> Path:
    from teeserve import pf

    pf.encrypt_tree(src, dst, key)
    return dst


@pytest.fixture(scope="session")
def encrypted_onnx_model_dir(onnx_model_dir: Path, wrap_key: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _encrypt_base(onnx_model_dir, tmp_path_factory.mktemp("enc-onnx") / "digits", wrap_key)


@pytest.fixture(scope="session")
def encrypted_saved_model_dir(saved_model_dir: Path, wrap_key: bytes,
                              tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _encrypt_base(saved_model_dir, tmp_path_factory.mktemp("enc-sm") / "digits", wrap_key)


class LoopThread:
    """An asyncio event loop running in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (the core's sync methods live there)."""
        async def wrap() -> T:
            return fn()
        return self.run(wrap())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture()
def make_core(loop_thread: LoopThread) -> Iterator[Callable[..., Any]]:
    from teeserve.serving._config import ModelConfig, ServingOptions
    from teeserve.serving._core import ServingCore

    made: list[Any] = []

    def make(configs: Any, name: str = "digits", *, keyring: Any = None, start: bool = True,
             **options: Any) -> Any:
        if isinstance(configs, (str, os.PathLike)):
            configs = [ModelConfig(name, os.fspath(configs))]
        options.setdefault("file_system_poll_wait_seconds", 0)
        options.setdefault("max_num_load_retries", 0)
        options.setdefault("load_retry_interval_seconds", 0.05)
        c = ServingCore(configs, keyring=keyring, options=ServingOptions(**options))
        made.append(c)
        if start:
            loop_thread.run(c.start())
        return c

    yield make
    for c in made:
        if c._started:
            loop_thread.run(c.stop())


@pytest.fixture()
def core(make_core: Callable[..., Any], onnx_model_dir: Path) -> Any:
    return make_core(onnx_model_dir)
