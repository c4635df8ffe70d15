"""ServingCore over an ONNX model: predict, metadata, status, and TF Serving's exact errors (§9)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve.serving import Code, ModelRef, ServingError, VersionState
from teeserve.serving._api import ServingCoreAPI
from teeserve.serving._tensors import DT


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


async def _called(fn: Any, *args: Any) -> Any:
    """A synchronous core call as a coroutine, so that it raises where _err expects it."""
    return fn(*args)


def _err(loop_thread: Any, coro: Any) -> ServingError:
    with pytest.raises(ServingError) as e:
        loop_thread.run(coro)
    return e.value


def test_core_satisfies_the_front_end_contract(core: Any) -> None:
    api: ServingCoreAPI = core  # noqa: F841 - a static check; the runtime one follows
    for name in ("predict", "classify", "regress", "signatures", "model_status", "is_ready"):
        assert callable(getattr(core, name))


def test_predict_matches_reference_and_echoes_version(core: Any, loop_thread: Any, digits_reference: Any) -> None:
    x = _images(3)
    r = loop_thread.run(core.predict(ModelRef("digits"), "", {"images": x}))
    assert (r.name, r.version, r.signature_name) == ("digits", 1, "serving_default")
    ref = digits_reference(x)
    np.testing.assert_allclose(r.outputs["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.outputs["classes"], ref["classes"])
    assert r.outputs["classes"].dtype == np.int64


def test_output_filter_and_specific_version(core: Any, loop_thread: Any) -> None:
    r = loop_thread.run(core.predict(ModelRef("digits", version=1), "serving_default", {"images": _images()},
                                     ["classes"]))
    assert list(r.outputs) == ["classes"]


def test_synthesized_onnx_signature(core: Any, loop_thread: Any) -> None:
    name, version, sigs = loop_thread.call(lambda: core.signatures(ModelRef("digits")))
    assert (name, version, list(sigs)) == ("digits", 1, ["serving_default"])
    sig = sigs["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["images"].dtype == DT.FLOAT and sig.inputs["images"].shape == (-1, 8, 8)
    assert sig.outputs["probabilities"].shape == (-1, 10)
    assert sig.outputs["classes"].dtype == DT.INT64 and sig.outputs["classes"].shape == (-1,)


def test_status_and_readiness(core: Any, loop_thread: Any) -> None:
    assert loop_thread.call(core.is_ready)
    (st,) = loop_thread.call(lambda: core.model_status("digits"))
    assert (st.version, st.state, st.error_code, st.error_message) == (1, VersionState.AVAILABLE, Code.OK, "")
    assert loop_thread.call(lambda: core.model_status("digits", 1))[0].version == 1


@pytest.mark.parametrize("call, code, message", [
    (lambda c: c.predict(ModelRef("nope"), "", {}), Code.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (lambda c: c.predict(ModelRef("digits", 7), "", {}), Code.NOT_FOUND,
     "Servable not found for request: Specific(digits, 7)"),
    (lambda c: c.predict(ModelRef("nope", 3), "", {}), Code.NOT_FOUND,
     "Servable not found for request: Specific(nope, 3)"),
    (lambda c: c.predict(ModelRef(""), "", {}), Code.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (lambda c: c.predict(ModelRef("digits", label="gold"), "", {}), Code.INVALID_ARGUMENT,
     "Unrecognized servable version label: gold"),
    # TF resolves a label before the model: an unknown model has no labels
    (lambda c: c.predict(ModelRef("nope", label="stable"), "", {}), Code.INVALID_ARGUMENT,
     "Unrecognized servable version label: stable"),
    (lambda c: _called(c.signatures, ModelRef("nope", label="stable")), Code.INVALID_ARGUMENT,
     "Unrecognized servable version label: stable"),
    (lambda c: c.predict(ModelRef("digits", 1, "gold"), "", {}), Code.INVALID_ARGUMENT,
     "Both model version (1) and model version label (gold) cannot be supplied."),
    (lambda c: c.predict(ModelRef("digits"), "other", {}), Code.FAILED_PRECONDITION,
     'Serving signature key "other" not found.'),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": _images(), "x": _images()}), Code.INVALID_ARGUMENT,
     "input size does not match signature: 2!=1 len({images,x}) != len({images}). Sent extra: {x}. "
     "Missing but required: {}."),
    (lambda c: c.predict(ModelRef("digits"), "", {}), Code.INVALID_ARGUMENT,
     "input size does not match signature: 0!=1 len({}) != len({images}). Sent extra: {}. "
     "Missing but required: {images}."),
    (lambda c: c.predict(ModelRef("digits"), "", {"image": _images()}), Code.INVALID_ARGUMENT,
     "input tensor alias not found in signature: image. Inputs expected to be in the set {images}."),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": _images()}, ["probs"]), Code.INVALID_ARGUMENT,
     "output tensor alias not found in signature: probs Outputs expected to be in the set "
     "{classes,probabilities}."),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": _images()}, ["classes", "classes"]),
     Code.INVALID_ARGUMENT, "duplicate output tensor alias: classes"),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": _images().astype(np.int32)}), Code.INVALID_ARGUMENT,
     "Expects arg[0] to be float but int32 is provided (input tensor alias images)"),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": np.zeros((2, 8, 9), np.float32)}),
     Code.INVALID_ARGUMENT, "input tensor alias images has shape [2, 8, 9] but the signature expects [-1, 8, 8]"),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": np.zeros((8, 8), np.float32)}),
     Code.INVALID_ARGUMENT, "input tensor alias images has shape [8, 8]"),
    (lambda c: c.predict(ModelRef("digits"), "", {"images": np.array(["a"], dtype=object)}),
     Code.INVALID_ARGUMENT, "Expects arg[0] to be float but string is provided"),
])
def test_request_errors(core: Any, loop_thread: Any, call: Any, code: Code, message: str) -> None:
    err = _err(loop_thread, call(core))
    assert err.code == code
    assert err.message.startswith(message), err.message


def test_status_errors(core: Any, loop_thread: Any) -> None:
    for args, code, message in [
        (("nope",), Code.NOT_FOUND, "Could not find any versions of model nope"),
        (("nope", 3), Code.NOT_FOUND, "Could not find version 3 of model nope"),
        (("nope", None, "stable"), Code.INVALID_ARGUMENT, "Unrecognized servable version label: stable"),
        (("digits", 9), Code.NOT_FOUND, "Could not find version 9 of model digits"),
        (("digits", None, "gold"), Code.INVALID_ARGUMENT, "Unrecognized servable version label: gold"),
        (("",), Code.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ]:
        with pytest.raises(ServingError) as e:
            loop_thread.call(lambda a=args: core.model_status(*a))
        assert (e.value.code, e.value.message) == (code, message)


def test_classify_on_a_predict_only_model_is_a_clear_error(core: Any, loop_thread: Any) -> None:
    from teeserve._proto import pb

    inp = pb.Input()
    inp.example_list.examples.add()
    err = _err(loop_thread, core.classify(ModelRef("digits"), "", inp))
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == ("Expected classification signature method_name to be tensorflow/serving/classify. "
                           "Was: tensorflow/serving/predict")


def test_concurrent_predictions_run_off_the_event_loop(core: Any, loop_thread: Any) -> None:
    import asyncio
    import threading

    loop_ident = loop_thread._thread.ident
    seen: set[int | None] = set()
    entry = core._models["digits"].versions[1]
    real_run = entry.servable.run

    def spy(*a: Any) -> Any:
        seen.add(threading.get_ident())
        return real_run(*a)

    entry.servable.run = spy
    try:
        async def many() -> list[Any]:
            return await asyncio.gather(*(core.predict(ModelRef("digits"), "", {"images": _images(1, i)})
                                          for i in range(20)))
        results = loop_thread.run(many())
    finally:
        del entry.servable.run
    assert len(results) == 20 and loop_ident not in seen and seen


def test_model_without_a_model_file_fails_load_with_status(make_core: Any, tmp_path: Path,
                                                           loop_thread: Any) -> None:
    (tmp_path / "m" / "3").mkdir(parents=True)
    c = make_core(tmp_path / "m", "m")
    (st,) = loop_thread.call(lambda: c.model_status("m"))
    assert st.state == VersionState.END and st.error_code == Code.NOT_FOUND
    assert "Could not find SavedModel .pb or ONNX model.onnx" in st.error_message
    assert not loop_thread.call(c.is_ready)


def test_onnx_only_server_never_imports_tensorflow(onnx_model_dir: Path) -> None:
    """Loads and serves an ONNX model in a fresh interpreter; TensorFlow must stay out of sys.modules.

    Also prints the import footprint (time and peak RSS) of the core with and without TensorFlow.
    """
    code = textwrap.dedent(f"""
        import asyncio, json, resource, sys, time
        t0 = time.perf_counter()
        import numpy as np
        from teeserve.serving._core import ServingCore
        from teeserve.serving._config import ModelConfig, ServingOptions
        from teeserve.serving import ModelRef
        t_import = time.perf_counter() - t0
        async def main():
            c = ServingCore([ModelConfig("digits", {str(onnx_model_dir)!r})],
                            options=ServingOptions(file_system_poll_wait_seconds=0))
            await c.start()
            r = await c.predict(ModelRef("digits"), "", {{"images": np.zeros((1, 8, 8), np.float32)}})
            await c.stop()
            return r.version
        v = asyncio.run(main())
        print(json.dumps({{"tf": "tensorflow" in sys.modules, "version": v, "import_s": t_import,
                          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["version"] == 1
    assert info["tf"] is False
    print(f"ONNX-only core: import {info['import_s']:.2f} s, peak RSS {info['rss_mb']:.0f} MB")


def test_load_attempts_and_runtime_latency_are_recorded(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                        onnx_model_dir: Path) -> None:
    from teeserve.serving._metrics import METRICS

    def sample(name: str, labels: dict[str, str]) -> float:
        return METRICS.registry.get_sample_value(name, labels) or 0.0

    path = str(onnx_model_dir / "1")
    before = sample(":tensorflow:cc:saved_model:load_attempt_count", {"model_path": path, "status": "success"})
    c = make_core(onnx_model_dir, "metrics_model")
    assert sample(":tensorflow:cc:saved_model:load_attempt_count",
                  {"model_path": path, "status": "success"}) == before + 1
    (tmp_path / "bad" / "1").mkdir(parents=True)
    make_core(tmp_path / "bad", "bad")
    assert sample(":tensorflow:cc:saved_model:load_attempt_count",
                  {"model_path": str(tmp_path / "bad" / "1"), "status": "NOT_FOUND"}) == 1
    loop_thread.run(c.predict(ModelRef("metrics_model"), "", {"images": _images()}))
    assert sample(":tensorflow:serving:runtime_latency_count",
                  {"model_name": "metrics_model", "API": "Predict", "runtime": "ONNXRuntime"}) == 1


def test_fuzzed_predict_requests_get_only_serving_errors(core: Any, loop_thread: Any) -> None:
    """Random names, dtypes and shapes: a result or a ServingError that is never INTERNAL."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.float16])
    arrays = hnp.arrays(dtype=dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9))
    names = st.sampled_from(["images", "x", "", "images "])

    @settings(max_examples=150, deadline=None)
    @given(st.dictionaries(names, arrays, max_size=3),
           st.lists(st.sampled_from(["classes", "probabilities", "nope"]), max_size=3),
           st.sampled_from(["", "serving_default", "other"]))
    def check(inputs: dict[str, np.ndarray], output_filter: list[str], sig: str) -> None:
        try:
            r = loop_thread.run(core.predict(ModelRef("digits"), sig, inputs, output_filter))
        except ServingError as exc:
            assert exc.code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION), exc
        else:
            n = inputs["images"].shape[0]
            assert all(v.shape[0] == n for v in r.outputs.values())

    check()
