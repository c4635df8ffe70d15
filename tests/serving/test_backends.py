"""Backends and warmup: format detection, TFRecord framing against TensorFlow's, warmup replay (§5)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve import pf
from teeserve._proto import pb
from teeserve.serving import Code, ModelRef, VersionState
from teeserve.serving._config import ModelConfig, ServingOptions
from teeserve.serving._secrets import KeyRing, ModelFiles
from teeserve.serving._tensors import ndarray_to_tensor_proto
from teeserve.serving._warmup import WARMUP_FILE, crc32c, read_tfrecords, write_tfrecords
from teeserve.serving.backends import LoadError, detect_format, load_servable


def _predict_log(inputs: dict[str, np.ndarray], signature: str = "") -> bytes:
    log = pb.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = "ignored"
    req.model_spec.signature_name = signature
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(ndarray_to_tensor_proto(v))
    return log.SerializeToString()


def _copy_with_warmup(src_base: Path, dst_base: Path, records: list[bytes]) -> Path:
    shutil.copytree(src_base, dst_base)
    w = dst_base / "1" / WARMUP_FILE
    w.parent.mkdir(parents=True, exist_ok=True)
    w.write_bytes(write_tfrecords(records))
    return dst_base


def test_crc32c_known_answers() -> None:
    from teeserve.serving._warmup import _crc_update_py

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    for n in (4096, 5003, 100_000):  # the chunked numpy path agrees with the byte-wise table
        data = bytes((i * 31 + 7) & 0xFF for i in range(n))
        assert crc32c(data) == _crc_update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_tfrecord_framing_matches_tensorflow(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    records = [b"", b"a", b"hello" * 1000, bytes(range(256)) * 40]
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    assert read_tfrecords(path.read_bytes()) == records
    assert write_tfrecords(records) == path.read_bytes()
    ours = tmp_path / "ours.tfrecord"
    ours.write_bytes(write_tfrecords(records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: b[:-1], "truncated record"),
    (lambda b: b[:8] + bytes([b[8] ^ 1]) + b[9:], "length CRC mismatch"),
    (lambda b: b[:14] + bytes([b[14] ^ 1]) + b[15:], "data CRC mismatch"),
    (lambda b: b[:5], "truncated record header"),
])
def test_tfrecord_corruption_is_detected(damage: Any, fragment: str) -> None:
    data = write_tfrecords([b"payload-1", b"payload-2"])
    with pytest.raises(ValueError) as e:
        read_tfrecords(damage(data), "warmup")
    assert fragment in str(e.value) and "warmup" in str(e.value)


def test_format_detection(tmp_path: Path, onnx_model_dir: Path, saved_model_dir: Path) -> None:
    ring = KeyRing()
    assert detect_format(ModelFiles(onnx_model_dir / "1", ring)) == "onnx"
    assert detect_format(ModelFiles(saved_model_dir / "1", ring)) == "tensorflow"
    with pytest.raises(LoadError) as e:
        detect_format(ModelFiles(tmp_path, ring))
    assert e.value.code == Code.NOT_FOUND


def test_corrupt_onnx_model_fails_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(LoadError) as e:
        load_servable(ModelFiles(tmp_path, KeyRing()), ServingOptions())
    assert e.value.code == Code.INVALID_ARGUMENT and "not a loadable ONNX model" in e.value.message
    assert str(tmp_path / "model.onnx") in e.value.message


def test_warmup_replays_predict_records(make_core: Any, loop_thread: Any, tmp_path: Path,
                                        onnx_model_dir: Path) -> None:
    good = _predict_log({"images": np.zeros((2, 8, 8), np.float32)})
    bad = _predict_log({"pixels": np.zeros((2, 8, 8), np.float32)})
    ok_base = _copy_with_warmup(onnx_model_dir, tmp_path / "ok", [good] * 3)
    c = make_core(ok_base, num_request_iterations_for_warmup=2)
    assert loop_thread.call(lambda: c.model_status("digits"))[0].state == VersionState.AVAILABLE
    from teeserve.serving._metrics import METRICS  # TF's warmup metrics, for this version's path

    path = {"model_path": str(ok_base / "1")}
    assert METRICS.registry.get_sample_value(":tensorflow:serving:model_warmup_records_read", path) == 3
    assert METRICS.registry.get_sample_value(":tensorflow:serving:model_warmup_latency", path) > 0
    bad_base = _copy_with_warmup(onnx_model_dir, tmp_path / "bad", [good, bad])
    c2 = make_core(bad_base)
    (st,) = loop_thread.call(lambda: c2.model_status("digits"))
    assert st.state == VersionState.END and st.error_code == Code.INVALID_ARGUMENT
    assert "warmup record 1 failed: input tensor alias not found in signature: pixels" in st.error_message
    assert WARMUP_FILE in st.error_message
    c3 = make_core(bad_base, enable_model_warmup=False)  # warmup off: the file is not read
    assert loop_thread.call(lambda: c3.model_status("digits"))[0].state == VersionState.AVAILABLE


def test_warmup_record_limit_and_encrypted_warmup_file(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                       onnx_model_dir: Path, wrap_key: bytes) -> None:
    good = _predict_log({"images": np.zeros((1, 8, 8), np.float32)})
    too_many = _copy_with_warmup(onnx_model_dir, tmp_path / "many", [good] * 1001)
    c0 = make_core(too_many)
    (st,) = loop_thread.call(lambda: c0.model_status("digits"))
    assert st.state == VersionState.END and "Number of warmup records exceeds the maximum (1000)" in st.error_message
    enc = tmp_path / "enc" / "digits"
    pf.encrypt_tree(_copy_with_warmup(onnx_model_dir, tmp_path / "plain", [good]), enc, wrap_key)
    assert pf.is_protected_file(enc / "1" / WARMUP_FILE)
    c = make_core(enc, keyring=KeyRing({"default": wrap_key}))
    assert loop_thread.call(lambda: c.model_status("digits"))[0].state == VersionState.AVAILABLE


def test_warmup_classify_regress_and_multi_inference_records(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                             classify_model_dir: Path) -> None:
    inp = pb.Input()
    ex = inp.example_list.examples.add()
    ex.features.feature["x"].float_list.value.extend([1.0, 2.0])
    records = []
    log = pb.PredictionLog()
    log.classify_log.request.model_spec.signature_name = "classify_x"
    log.classify_log.request.input.CopyFrom(inp)
    records.append(log.SerializeToString())
    log = pb.PredictionLog()
    log.regress_log.request.model_spec.signature_name = "regress_x"
    log.regress_log.request.input.CopyFrom(inp)
    records.append(log.SerializeToString())
    log = pb.PredictionLog()
    t = log.multi_inference_log.request.tasks.add(method_name="tensorflow/serving/regress")
    t.model_spec.signature_name = "regress_x"
    log.multi_inference_log.request.input.CopyFrom(inp)
    records.append(log.SerializeToString())
    records.append(_predict_log({"x": np.ones((1, 2), np.float32)}))
    base = _copy_with_warmup(classify_model_dir, tmp_path / "ex", records)
    c = make_core([ModelConfig("ex", str(base))])
    (st,) = loop_thread.call(lambda: c.model_status("ex"))
    assert st.state == VersionState.AVAILABLE, st
    r = loop_thread.run(c.predict(ModelRef("ex"), "", {"x": np.array([[1.0, 2.5]], np.float32)}))
    assert r.outputs["y"].tolist() == [3.5]

    # TF's request_example_counts: one observation per Classify / Regress / MultiInference request
    from teeserve.serving._metrics import METRICS

    def counts() -> tuple[float, float]:
        get = METRICS.registry.get_sample_value
        return (get(":tensorflow:serving:request_example_counts_count", {"model_name": "ex"}) or 0.0,
                get(":tensorflow:serving:request_example_counts_sum", {"model_name": "ex"}) or 0.0)

    before = counts()
    three = pb.Input()
    for _ in range(3):
        three.example_list_with_context.examples.add().features.feature["x"].float_list.value.extend([1.0, 2.0])
    loop_thread.run(c.classify(ModelRef("ex"), "classify_x", three))
    loop_thread.run(c.regress(ModelRef("ex"), "regress_x", inp))
    multi = pb.MultiInferenceRequest()
    multi.input.CopyFrom(three)
    task = multi.tasks.add(method_name="tensorflow/serving/regress")
    task.model_spec.name, task.model_spec.signature_name = "ex", "regress_x"
    loop_thread.run(c.multi_inference(multi))
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 7)


def _counting_servable(model_dir: Path) -> Any:
    """The digits ONNX servable, counting its runs in ``.runs`` (what a warmup replays)."""
    import onnxruntime as ort

    from teeserve.serving.backends._onnx import OnnxServable

    class Counting(OnnxServable):
        runs = 0

        def run(self, signature_name: str, inputs: Any, output_aliases: Any) -> Any:
            self.runs += 1
            return super().run(signature_name, inputs, output_aliases)

    return Counting(ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]))


def test_warmup_replays_each_record_num_request_iterations_times(onnx_model_dir: Path) -> None:
    """``--num_request_iterations_for_warmup``: every record is run that many times (at least once)."""
    from teeserve.serving._warmup import run_warmup

    servable = _counting_servable(onnx_model_dir)
    data = write_tfrecords([_predict_log({"images": np.zeros((1, 8, 8), np.float32)})] * 3)
    for iterations, want in ((1, 3), (4, 12), (0, 3)):
        servable.runs = 0
        assert run_warmup(servable, data, "warmup", iterations) == 3
        assert servable.runs == want, iterations


def test_thread_flags_reach_tensorflow(saved_model_dir: Path) -> None:
    """``--tensorflow_intra_op_parallelism`` / ``--tensorflow_inter_op_parallelism`` set TensorFlow's
    process-wide thread pools before its runtime starts (a fresh interpreter: they cannot change later)."""
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import asyncio, json
        import numpy as np
        from teeserve.serving import ModelRef
        from teeserve.serving._config import ModelConfig, ServingOptions
        from teeserve.serving._core import ServingCore
        async def main():
            c = ServingCore([ModelConfig("digits", {str(saved_model_dir)!r})],
                            options=ServingOptions(file_system_poll_wait_seconds=0, tensorflow_intra_op_parallelism=3,
                                                   tensorflow_inter_op_parallelism=2))
            await c.start()
            r = await c.predict(ModelRef("digits"), "", {{"images": np.zeros((1, 8, 8), np.float32)}})
            await c.stop()
            import tensorflow as tf
            return [r.version, tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()]
        print(json.dumps(asyncio.run(main())))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 3, 2]


def test_a_warmup_stops_between_runs_when_the_server_stops(onnx_model_dir: Path) -> None:
    """``should_stop`` is asked before every run (a stopping server abandons a long warmup): once it
    says yes, no further run starts and the warmup fails with CANCELLED."""
    from teeserve.serving._warmup import run_warmup

    servable = _counting_servable(onnx_model_dir)
    data = write_tfrecords([_predict_log({"images": np.zeros((1, 8, 8), np.float32)})] * 3)
    with pytest.raises(LoadError) as e:
        run_warmup(servable, data, "warmup", 4, should_stop=lambda: servable.runs >= 5)
    assert e.value.code == Code.CANCELLED and "the server is stopping" in e.value.message
    assert servable.runs == 5
    servable.runs = 0
    assert run_warmup(servable, data, "warmup", 4, should_stop=lambda: False) == 3 and servable.runs == 12


def _zipmap_model(with_tensor_output: bool) -> bytes:
    """X [N,2] -> Z = ZipMap(X) (a sequence of maps, as skl2onnx classifiers give), and optionally
    Y = Identity(X)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 2])
    z = helper.make_value_info("Z", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))))
    nodes = [helper.make_node("ZipMap", ["X"], ["Z"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])]
    outputs = [z]
    if with_tensor_output:
        nodes.append(helper.make_node("Identity", ["X"], ["Y"]))
        outputs.append(helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2]))
    graph = helper.make_graph(nodes, "zipmap", [x], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model.SerializeToString()


def test_onnx_outputs_that_are_not_tensors_are_left_out_of_the_signature(tmp_path: Path, caplog: Any) -> None:
    """A sequence/map output has no TensorProto form: it used to come back as Python repr text in a
    DT_STRING tensor (and as INTERNAL with batching)."""
    (tmp_path / "model.onnx").write_bytes(_zipmap_model(with_tensor_output=True))
    servable = load_servable(ModelFiles(tmp_path, KeyRing()), ServingOptions())
    sig = servable.signatures["serving_default"]
    assert list(sig.outputs) == ["Y"] and list(sig.inputs) == ["X"]
    assert "left out of the signature: Z (seq(map(int64,tensor(float))))" in caplog.text
    x = np.array([[0.25, 0.75]], dtype=np.float32)
    np.testing.assert_array_equal(servable.run("serving_default", {"X": x}, ["Y"])["Y"], x)

    only = tmp_path / "only"
    only.mkdir()
    (only / "model.onnx").write_bytes(_zipmap_model(with_tensor_output=False))
    with pytest.raises(LoadError) as e:
        load_servable(ModelFiles(only, KeyRing()), ServingOptions())
    assert e.value.code == Code.INVALID_ARGUMENT and "no tensor output to serve" in e.value.message


def _identity_model(shape: list[int] | None) -> bytes:
    """Y = Identity(X), X float with ``shape`` (None: no shape declared at all; []: a scalar)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_an_onnx_input_without_a_declared_shape_takes_any_rank_and_a_scalar_stays_a_scalar(tmp_path: Path) -> None:
    """onnxruntime reports [] for both; the first used to be taken as a scalar, refusing every other rank."""
    (tmp_path / "model.onnx").write_bytes(_identity_model(None))
    servable = load_servable(ModelFiles(tmp_path, KeyRing()), ServingOptions())
    assert servable.signatures["serving_default"].inputs["X"].shape is None  # metadata: unknown_rank
    x = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    np.testing.assert_array_equal(servable.run("serving_default", {"X": x}, ["Y"])["Y"], x)

    scalar = tmp_path / "scalar"
    scalar.mkdir()
    (scalar / "model.onnx").write_bytes(_identity_model([]))
    servable = load_servable(ModelFiles(scalar, KeyRing()), ServingOptions())
    assert servable.signatures["serving_default"].inputs["X"].shape == ()
