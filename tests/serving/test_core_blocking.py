"""ServingCore.predict_blocking: the thread-safe Predict that gRPC's thread-pool server calls from its
worker threads (same results and errors as ``predict``; versions held safely across an unload)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve.serving import Code, ModelRef, ServingError
from teeserve.serving._config import ModelConfig


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


def test_blocking_predict_equals_async_predict(core: Any, loop_thread: Any) -> None:
    x = _images(3)
    assert core.blocking_predict
    want = loop_thread.run(core.predict(ModelRef("digits"), "", {"images": x}))
    got = core.predict_blocking(ModelRef("digits"), "", {"images": x})
    assert (got.name, got.version, got.signature_name) == (want.name, want.version, want.signature_name)
    assert list(got.outputs) == list(want.outputs)
    for alias in want.outputs:
        np.testing.assert_array_equal(got.outputs[alias], want.outputs[alias])
    only = core.predict_blocking(ModelRef("digits", version=1), "serving_default", {"images": x}, ["classes"])
    assert list(only.outputs) == ["classes"]


@pytest.mark.parametrize("ref,inputs,code,message", [
    (ModelRef("nope"), {"images": _images()}, Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (ModelRef("nope", label="stable"), {"images": _images()}, Code.INVALID_ARGUMENT,
     "Unrecognized servable version label: stable"),
    (ModelRef("digits", version=7), {"images": _images()}, Code.NOT_FOUND,
     "Servable not found for request: Specific(digits, 7)"),
    (ModelRef("digits"), {"pixels": _images()}, Code.INVALID_ARGUMENT, "input tensor alias not found in signature"),
    (ModelRef("digits"), {"images": _images().astype(np.float64)}, Code.INVALID_ARGUMENT, "Expects arg[0] to be float"),
])
def test_blocking_predict_errors_are_the_async_ones(core: Any, loop_thread: Any, ref: ModelRef, inputs: Any,
                                                    code: Code, message: str) -> None:
    with pytest.raises(ServingError) as blocking:
        core.predict_blocking(ref, "", inputs)
    with pytest.raises(ServingError) as asynchronous:
        loop_thread.run(core.predict(ref, "", inputs))
    assert blocking.value.code == asynchronous.value.code == code
    assert blocking.value.message == asynchronous.value.message
    assert message in blocking.value.message


def test_blocking_predict_is_refused_with_batching(make_core: Any, onnx_model_dir: Path) -> None:
    core = make_core(onnx_model_dir, enable_batching=True)
    assert not core.blocking_predict
    with pytest.raises(RuntimeError):
        core.predict_blocking(ModelRef("digits"), "", {"images": _images()})


def test_threads_predicting_while_the_version_is_swapped(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                        onnx_model_dir: Path, make_onnx_model: Any) -> None:
    """Requests from several threads during reloads that replace the model: every request either
    runs on a version that stays loaded until it is done, or is NOT_FOUND, never a crash."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(onnx_model_dir, a)
    make_onnx_model(b / "2", scale=2.0)
    core = make_core([ModelConfig("digits", str(a))])
    stop = threading.Event()
    outcomes: list[Any] = []

    def client() -> None:
        while not stop.is_set():
            try:
                r = core.predict_blocking(ModelRef("digits"), "", {"images": _images(1)})
                outcomes.append(r.version)
            except ServingError as exc:
                outcomes.append(exc.code)
            except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
                outcomes.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for base in (b, a, b):
            loop_thread.run(core.reload_config([ModelConfig("digits", str(base))]))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    odd = [o for o in outcomes if o not in (1, 2, Code.NOT_FOUND)]
    assert not odd, odd[:5]
    assert 1 in outcomes and 2 in outcomes
    assert core.predict_blocking(ModelRef("digits"), "", {"images": _images(1)}).version == 2
