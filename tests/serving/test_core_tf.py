"""ServingCore over TensorFlow SavedModels: predict, classify, regress, multi-inference, encrypted load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve._proto import pb
from teeserve.serving import Code, ModelRef, ServingError, VersionState
from teeserve.serving._config import ModelConfig
from teeserve.serving._tensors import DT


@pytest.fixture(scope="module")
def tf_core(loop_thread: Any, saved_model_dir: Path, classify_model_dir: Path, encrypted_saved_model_dir: Path,
            wrap_key: bytes) -> Any:
    """One core (TF loads are slow): plaintext and encrypted SavedModels and the tf.Example model."""
    from teeserve.serving._config import ServingOptions
    from teeserve.serving._core import ServingCore
    from teeserve.serving._secrets import KeyRing

    c = ServingCore([ModelConfig("digits_tf", str(saved_model_dir)),
                     ModelConfig("examples", str(classify_model_dir)),
                     ModelConfig("digits_enc", str(encrypted_saved_model_dir))],
                    keyring=KeyRing({"default": wrap_key}),
                    options=ServingOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0))
    loop_thread.run(c.start(), timeout=300)
    yield c
    loop_thread.run(c.stop())


def _examples(*pairs: tuple[float, float], context: bool = False) -> Any:
    inp = pb.Input()
    lst = inp.example_list_with_context.examples if context else inp.example_list.examples
    for a, b in pairs:
        ex = lst.add()
        ex.features.feature["x"].float_list.value.extend([a, b])
    if context:
        inp.example_list_with_context.context.features.feature["unused"].float_list.value.append(1.0)
    return inp


def test_all_tf_models_available(tf_core: Any, loop_thread: Any) -> None:
    for name in ("digits_tf", "examples", "digits_enc"):
        (st,) = loop_thread.call(lambda n=name: tf_core.model_status(n))
        assert st.state == VersionState.AVAILABLE, (name, st)
    assert loop_thread.call(tf_core.is_ready)


@pytest.mark.parametrize("model", ["digits_tf", "digits_enc"])
def test_saved_model_predict_matches_reference(tf_core: Any, loop_thread: Any, digits_reference: Any,
                                               model: str) -> None:
    x = np.random.default_rng(3).random((4, 8, 8), dtype=np.float32)
    r = loop_thread.run(tf_core.predict(ModelRef(model), "", {"images": x}))
    ref = digits_reference(x)
    np.testing.assert_allclose(r.outputs["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r.outputs["classes"], ref["classes"])
    assert (r.version, r.signature_name) == (1, "serving_default")


def test_saved_model_signatures_come_from_the_signature_def(tf_core: Any, loop_thread: Any) -> None:
    _, _, sigs = loop_thread.call(lambda: tf_core.signatures(ModelRef("digits_tf")))
    sig = sigs["serving_default"]
    assert sig.inputs["images"].dtype == DT.FLOAT and sig.inputs["images"].shape == (-1, 8, 8)
    assert sig.inputs["images"].name.startswith("serving_default_images")
    assert sig.outputs["classes"].dtype == DT.INT64
    _, _, sigs = loop_thread.call(lambda: tf_core.signatures(ModelRef("examples")))
    assert set(sigs) == {"classify_x", "regress_x", "serving_default"}
    assert sigs["classify_x"].method_name == "tensorflow/serving/classify"
    assert sigs["regress_x"].inputs["inputs"].dtype == DT.STRING


def test_saved_model_bad_requests(tf_core: Any, loop_thread: Any) -> None:
    with pytest.raises(ServingError) as e:
        loop_thread.run(tf_core.predict(ModelRef("digits_tf"), "", {"images": np.zeros((1, 8, 8), np.float64)}))
    assert e.value.code == Code.INVALID_ARGUMENT and "Expects arg[0] to be float but double" in e.value.message
    with pytest.raises(ServingError) as e:
        loop_thread.run(tf_core.predict(ModelRef("digits_tf"), "nope", {}))
    assert e.value.code == Code.FAILED_PRECONDITION


def test_classify(tf_core: Any, loop_thread: Any) -> None:
    for ctx in (False, True):
        name, version, result = loop_thread.run(
            tf_core.classify(ModelRef("examples"), "classify_x", _examples((0.0, 1.0), (2.0, 0.0), context=ctx)))
        assert (name, version) == ("examples", 1)
        assert len(result.classifications) == 2
        first = result.classifications[0].classes
        assert [c.label for c in first] == ["neg", "pos"]
        e = np.exp([0.0, 1.0])
        np.testing.assert_allclose([c.score for c in first], e / e.sum(), rtol=1e-6)


def test_regress_and_multi_inference(tf_core: Any, loop_thread: Any) -> None:
    _, _, result = loop_thread.run(tf_core.regress(ModelRef("examples"), "regress_x",
                                                   _examples((1.0, 2.0), (3.0, 4.5))))
    assert [r.value for r in result.regressions] == [3.0, 7.5]
    req = pb.MultiInferenceRequest()
    for sig, method in (("classify_x", "tensorflow/serving/classify"), ("regress_x", "tensorflow/serving/regress")):
        t = req.tasks.add()
        t.model_spec.name = "examples"
        t.model_spec.signature_name = sig
        t.method_name = method
    req.input.CopyFrom(_examples((1.0, 2.0)))
    resp = loop_thread.run(tf_core.multi_inference(req))
    assert resp.results[0].model_spec.version.value == 1
    assert [c.label for c in resp.results[0].classification_result.classifications[0].classes] == ["neg", "pos"]
    assert resp.results[1].regression_result.regressions[0].value == 3.0
    # The official stubs' message type is accepted as well.
    from tensorflow_serving.apis import inference_pb2

    official = inference_pb2.MultiInferenceRequest.FromString(req.SerializeToString())
    assert loop_thread.run(tf_core.multi_inference(official)).results[1].regression_result.regressions[0].value == 3.0


@pytest.mark.parametrize("mutate, code, message", [
    (lambda r: r.tasks[1].model_spec.__setattr__("name", "other"), Code.INVALID_ARGUMENT,
     "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    (lambda r: r.tasks[1].model_spec.__setattr__("signature_name", "classify_x"), Code.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: classify_x"),
    (lambda r: r.tasks[1].__setattr__("method_name", "tensorflow/serving/predict"), Code.UNIMPLEMENTED,
     "Unsupported signature method_name: tensorflow/serving/predict"),
])
def test_multi_inference_errors(tf_core: Any, loop_thread: Any, mutate: Any, code: Code, message: str) -> None:
    req = pb.MultiInferenceRequest()
    for sig, method in (("classify_x", "tensorflow/serving/classify"), ("regress_x", "tensorflow/serving/regress")):
        t = req.tasks.add(method_name=method)
        t.model_spec.name = "examples"
        t.model_spec.signature_name = sig
    req.input.CopyFrom(_examples((1.0, 2.0)))
    mutate(req)
    with pytest.raises(ServingError) as e:
        loop_thread.run(tf_core.multi_inference(req))
    assert (e.value.code, e.value.message) == (code, message)


def test_classify_errors(tf_core: Any, loop_thread: Any) -> None:
    with pytest.raises(ServingError) as e:
        loop_thread.run(tf_core.classify(ModelRef("examples"), "classify_x", pb.Input()))
    assert (e.value.code, e.value.message) == (Code.INVALID_ARGUMENT, "Input is empty.")
    with pytest.raises(ServingError) as e:  # a feature the parser requires is missing: TF's own error
        loop_thread.run(tf_core.regress(ModelRef("examples"), "regress_x", _examples((1.0, 2.0))
                                        .__class__.FromString(b"\x0a\x02\x0a\x00")))
    assert e.value.code == Code.INVALID_ARGUMENT


def test_run_time_errors_carry_the_op_message_without_python_frames(tf_core: Any, loop_thread: Any) -> None:
    """Python TensorFlow wraps an op's error in a traceback of the server's frames (file paths); the
    client gets the op's message only, as from TensorFlow Serving."""
    inp = pb.Input()
    inp.example_list.examples.add().features.feature["y"].float_list.value.extend([1.0, 2.0])
    with pytest.raises(ServingError) as e:
        loop_thread.run(tf_core.classify(ModelRef("examples"), "classify_x", inp))
    message = e.value.message
    assert e.value.code == Code.INVALID_ARGUMENT
    assert "Feature: x (data type: float) is required but could not be found." in message
    for leak in ('File "', "most recent call last", "Graph execution error", "[Op:", ".py"):
        assert leak not in message, (leak, message)


def test_op_error_text_keeps_only_the_op_message() -> None:
    from teeserve.serving.backends._tf import op_error_text

    wrapped = ('Graph execution error:\n\nDetected at node StringToNumber defined at (most recent call last):\n'
               '  File "/srv/app/model.py", line 5, in <module>\n\n  File "/srv/app/model.py", line 4, in f\n'
               '    return tf.strings.to_number(x)\n\n'
               'StringToNumberOp could not correctly convert string: abc\n'
               '\t [[{{node StringToNumber}}]] [Op:__inference_f_7]')
    assert op_error_text(wrapped) == ("StringToNumberOp could not correctly convert string: abc\n"
                                      "\t [[{{node StringToNumber}}]]")
    assert op_error_text("Input to reshape is a tensor with 2 values") == "Input to reshape is a tensor with 2 values"
    assert op_error_text("Graph execution error:\n\n") == "TensorFlow could not run the model"


def test_saved_model_footprint_in_a_fresh_process(saved_model_dir: Path) -> None:
    """Loading a SavedModel imports TensorFlow; print the cost for the report (no timed assertion)."""
    code = textwrap.dedent(f"""
        import asyncio, json, resource, sys, time
        import numpy as np
        from teeserve.serving._core import ServingCore
        from teeserve.serving._config import ModelConfig, ServingOptions
        from teeserve.serving import ModelRef
        async def main():
            c = ServingCore([ModelConfig("d", {str(saved_model_dir)!r})],
                            options=ServingOptions(file_system_poll_wait_seconds=0))
            t0 = time.perf_counter()
            await c.start()
            t = time.perf_counter() - t0
            r = await c.predict(ModelRef("d"), "", {{"images": np.zeros((1, 8, 8), np.float32)}})
            await c.stop()
            return t
        t = asyncio.run(main())
        print(json.dumps({{"tf": "tensorflow" in sys.modules, "load_s": t,
                          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["tf"] is True
    print(f"SavedModel core: first load incl. TF import {info['load_s']:.2f} s, peak RSS {info['rss_mb']:.0f} MB")


def test_regress_runs_a_predict_signature_of_the_right_shape(make_core: Any, loop_thread: Any,
                                                             tmp_path: Path) -> None:
    """Like TF Serving (method-name check off by default): shape decides, not the method name."""
    import tensorflow as tf

    class Reg(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs: Any) -> dict[str, Any]:
            x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
            return {"outputs": tf.reduce_sum(x, axis=1)}

    m = Reg()
    tf.saved_model.save(m, str(tmp_path / "reg" / "1"), signatures={"serving_default": m.serve})
    c = make_core(tmp_path / "reg", "reg")
    _, _, result = loop_thread.run(c.regress(ModelRef("reg"), "", _examples((1.0, 2.0))))
    assert [r.value for r in result.regressions] == [3.0]
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.classify(ModelRef("reg"), "", _examples((1.0, 2.0))))
    assert e.value.message.startswith("Expected classification signature method_name")


def test_signature_method_name_check(make_core: Any, loop_thread: Any, classify_model_dir: Path) -> None:
    c = make_core(classify_model_dir, "ex", enable_signature_method_name_check=True)
    with pytest.raises(ServingError) as e:  # a predict request on a classification signature
        loop_thread.run(c.predict(ModelRef("ex"), "classify_x", {"inputs": np.array([b""], dtype=object)}))
    assert e.value.message == ("Expected prediction signature method_name to be tensorflow/serving/predict. "
                               "Was: tensorflow/serving/classify")
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.regress(ModelRef("ex"), "classify_x", _examples((1.0, 2.0))))
    assert e.value.message.startswith("Expected regression signature method_name to be tensorflow/serving/regress")
    _, _, result = loop_thread.run(c.regress(ModelRef("ex"), "regress_x", _examples((1.0, 2.0))))
    assert result.regressions[0].value == 3.0
