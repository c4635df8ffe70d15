"""``teeserve model convert``: frozen graph -> SavedModel and SavedModel -> ONNX, through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from teeserve import models
from teeserve.cli import main
from teeserve.models import _convert

Capture = pytest.CaptureFixture[str]



@pytest.fixture(scope="module")
def frozen_pb(tf, digits: models.DemoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model as a frozen GraphDef: ``images`` -> ``probabilities``, ``classes``."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(str(digits.saved_model_dir))
    serve = loaded.signatures["serving_default"]

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8], tf.float32, name="images")])
    def frozen(images):
        out = serve(images=images)
        return {
            "probabilities": tf.identity(out["probabilities"], name="probabilities"),
            "classes": tf.identity(out["classes"], name="classes"),
        }

    graph_def = convert_variables_to_constants_v2(frozen.get_concrete_function()).graph.as_graph_def()
    assert not any(n.op in ("VarHandleOp", "ReadVariableOp") for n in graph_def.node)
    path = tmp_path_factory.mktemp("frozen") / "digits.pb"
    path.write_bytes(graph_def.SerializeToString())
    return path


def _run_frozen(tf, pb: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    graph_def = tf.compat.v1.GraphDef.FromString(pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run({"probabilities": "probabilities:0", "classes": "classes:0"}, {"images:0": images})


@pytest.fixture(scope="module")
def converted(frozen_pb: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    export_dir = tmp_path_factory.mktemp("convert") / "models" / "digits-frozen"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([
            "model", "convert", "--frozen-graph", str(frozen_pb), "--export-dir", str(export_dir),
            "--version", "3", "--inputs", "images", "--outputs", "probabilities,classes:0",
        ])  # fmt: skip
    assert rc == 0, err.getvalue()
    return export_dir, err.getvalue()


def test_frozen_graph_to_saved_model_layout_and_signature(converted, saved_model_proto) -> None:
    export_dir, log = converted
    version = export_dir / "3"
    assert sorted(os.listdir(export_dir)) == ["3"]
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert "max abs diff 0 " in log  # the same graph computes exactly the same
    (meta,) = saved_model_proto(version).meta_graphs
    sig = meta.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert set(sig.inputs) == {"images"} and sig.inputs["images"].name == "images:0"
    assert set(sig.outputs) == {"probabilities", "classes"}
    assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, 8, 8]


def test_converted_saved_model_computes_like_the_frozen_graph(
    tf, converted, frozen_pb, held_out, digits
) -> None:
    export_dir, _ = converted
    x, y = held_out
    got = tf.saved_model.load(str(export_dir / "3")).signatures["serving_default"](images=tf.constant(x))
    want = _run_frozen(tf, frozen_pb, x)
    np.testing.assert_array_equal(got["probabilities"].numpy(), want["probabilities"])
    np.testing.assert_array_equal(got["classes"].numpy(), want["classes"])
    assert np.mean(want["classes"] == y) == pytest.approx(digits.accuracy)


def test_saved_model_to_onnx_cli(tf, converted, held_out, capsys: Capture) -> None:
    export_dir, _ = converted
    onnx_path = export_dir.parent / "digits-frozen-onnx" / "3" / "model.onnx"
    rc = main([
        "model", "convert", "--saved-model", str(export_dir / "3"), "--onnx-out", str(onnx_path),
        "--opset", "13",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "verified ONNX against the SavedModel: max abs diff" in captured.err
    assert f"ONNX: {onnx_path}" in captured.out
    import onnx

    proto = onnx.load(str(onnx_path))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 13
    x, _ = held_out
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert {o.name for o in session.get_outputs()} == {"probabilities", "classes"}
    probabilities, classes = session.run(["probabilities", "classes"], {"images": x})
    want = tf.saved_model.load(str(export_dir / "3")).signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(probabilities, want["probabilities"].numpy(), rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(classes, want["classes"].numpy())


def test_frozen_graph_straight_to_onnx(frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    rc = main([
        "model", "convert", "--frozen-graph", str(frozen_pb), "--export-dir", str(tmp_path / "m"),
        "--inputs", "images", "--outputs", "classes",
        "--onnx-out", str(tmp_path / "m-onnx" / "1" / "model.onnx"),
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    onnx_path = tmp_path / "m-onnx" / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["classes"]
    assert (tmp_path / "m" / "1" / "saved_model.pb").is_file()


def test_frozen_graph_with_an_existing_onnx_out_is_refused_before_converting(
        frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    """The SavedModel used to be written first and left behind when --onnx-out then existed."""
    onnx_out = tmp_path / "m-onnx" / "1" / "model.onnx"
    onnx_out.parent.mkdir(parents=True)
    onnx_out.write_bytes(b"the user's")
    rc = main(["model", "convert", "--frozen-graph", str(frozen_pb), "--export-dir", str(tmp_path / "m"),
               "--inputs", "images", "--outputs", "classes", "--onnx-out", str(onnx_out)])
    err = capsys.readouterr().err
    assert rc != 0 and str(onnx_out) in err and "exists" in err, err
    assert not (tmp_path / "m").exists() and onnx_out.read_bytes() == b"the user's"


def test_a_failed_onnx_step_removes_the_saved_model_it_made(frozen_pb: Path, tmp_path: Path, capsys: Capture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **kw: object) -> None:
        raise models.VerificationError("ONNX disagrees (a stand-in for a failed conversion)")

    monkeypatch.setattr(models, "saved_model_to_onnx", broken)
    (tmp_path / "kept").mkdir()  # an export dir that exists keeps everything but the new version
    (tmp_path / "kept" / "2").mkdir()
    for export_dir, gone in ((tmp_path / "new", tmp_path / "new"), (tmp_path / "kept", tmp_path / "kept" / "1")):
        rc = main(["model", "convert", "--frozen-graph", str(frozen_pb), "--export-dir", str(export_dir),
                   "--inputs", "images", "--outputs", "classes",
                   "--onnx-out", str(tmp_path / "o" / "1" / "model.onnx")])
        err = capsys.readouterr().err
        assert rc != 0 and "a stand-in for a failed conversion" in err and f"removed {gone}" in err, err
        assert not gone.exists()
    assert (tmp_path / "kept" / "2").is_dir() and not (tmp_path / "o").exists()


# --- errors: one line naming the problem, non-zero exit, nothing written ------------------------


def _convert_frozen(
    pb: Path, export_dir: Path, *extra: str, inputs: str = "images", outputs: str = "classes"
) -> int:
    return main([
        "model", "convert", "--frozen-graph", str(pb), "--export-dir", str(export_dir),
        "--inputs", inputs, "--outputs", outputs, *extra,
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\x00 definitely not a protobuf \x01\x02", "not a TensorFlow GraphDef"),
        (b"", "has no nodes"),
        (None, "no such file"),
    ],
)
def test_bad_pb(tmp_path: Path, capsys: Capture, content: bytes | None, message: str) -> None:
    pb = tmp_path / "model.pb"
    if content is not None:
        pb.write_bytes(content)
    rc = _convert_frozen(pb, tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("teeserve: error: ") and message in last and str(pb) in last
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_saved_model_pb_is_not_a_frozen_graph(digits, tmp_path: Path, capsys: Capture) -> None:
    rc = _convert_frozen(digits.saved_model_dir / "saved_model.pb", tmp_path / "out")
    assert rc == 1
    assert "teeserve: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_input_lists_placeholders(frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    rc = _convert_frozen(frozen_pb, tmp_path / "out", inputs="input")
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{frozen_pb}: input tensor 'input' is not in the graph; candidates: images" in err
    assert not (tmp_path / "out").exists()


def test_unknown_output_lists_candidates(frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    rc = _convert_frozen(frozen_pb, tmp_path / "out", outputs="predict")
    err = capsys.readouterr().err
    assert rc == 1
    assert "output tensor 'predict' is not in the graph" in err
    assert "probabilities" in err and "classes" in err
    rc = _convert_frozen(frozen_pb, tmp_path / "out", outputs="classes:7")
    assert rc == 1 and "'classes:7' is not in the graph" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_version_is_refused_then_forced(frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    out = tmp_path / "m"
    (out / "1").mkdir(parents=True)
    (out / "1" / "keep.txt").write_text("old")
    assert _convert_frozen(frozen_pb, out) == 1
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert (out / "1" / "keep.txt").read_text() == "old"
    assert _convert_frozen(frozen_pb, out, "--force") == 0
    assert sorted(os.listdir(out / "1")) == ["saved_model.pb", "variables"]
    assert sorted(os.listdir(out)) == ["1"]


def test_existing_onnx_is_refused(converted, tmp_path: Path, capsys: Capture) -> None:
    export_dir, _ = converted
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    rc = main(["model", "convert", "--saved-model", str(export_dir / "3"), "--onnx-out", str(target)])
    assert rc == 1 and "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"old"


def test_bad_saved_model_and_signature(converted, tmp_path: Path, capsys: Capture) -> None:
    export_dir, _ = converted
    out = tmp_path / "x" / "1" / "model.onnx"
    assert main(["model", "convert", "--saved-model", str(tmp_path), "--onnx-out", str(out)]) == 1
    assert "not a SavedModel (no saved_model.pb)" in capsys.readouterr().err
    assert main(["model", "convert", "--saved-model", str(tmp_path / "nope"), "--onnx-out", str(out)]) == 1
    assert "no such SavedModel folder" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"\xff\xfe garbage")
    assert main(["model", "convert", "--saved-model", str(tmp_path / "junk"), "--onnx-out", str(out)]) == 1
    assert "not a SavedModel protobuf" in capsys.readouterr().err
    rc = main([
        "model", "convert", "--saved-model", str(export_dir / "3"), "--onnx-out", str(out),
        "--signature", "classify",
    ])  # fmt: skip
    assert rc == 1
    assert "no signature 'classify'; the SavedModel has: serving_default" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--saved-model", "m/1", "--onnx-out", "x.onnx", "--version", "2"], "--version applies to --frozen-graph"),
    (["--frozen-graph", "g.pb", "--export-dir", "m", "--inputs", "a", "--outputs", "b", "--opset", "13"],
     "--opset applies to the ONNX step: give --onnx-out with it"),
    (["--frozen-graph", "g.pb", "--export-dir", "m", "--inputs", "a", "--outputs", "b", "--signature", "s"],
     "--signature applies to the ONNX step: give --onnx-out with it"),
])
def test_flags_that_would_change_nothing_are_refused(tmp_path: Path, capsys: Capture, extra: list[str],
                                                     message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """They used to be ignored silently (exit 0 with the flag's effect missing)."""
    monkeypatch.chdir(tmp_path)
    assert main(["model", "convert", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


def test_usage_errors(frozen_pb: Path, tmp_path: Path, capsys: Capture) -> None:
    assert main(["model", "convert", "--frozen-graph", str(frozen_pb), "--export-dir", str(tmp_path)]) == 2
    assert "--frozen-graph needs --inputs, --outputs" in capsys.readouterr().err
    assert main(["model", "convert", "--saved-model", str(tmp_path)]) == 2
    assert "--saved-model needs --onnx-out" in capsys.readouterr().err
    assert _convert_frozen(frozen_pb, tmp_path / "m", "--version", "-1") == 2
    assert "non-negative integer" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_onnx_mismatch_is_an_error_and_writes_nothing(converted, tmp_path: Path, monkeypatch) -> None:
    export_dir, _ = converted
    real = _convert.run_onnx

    def skewed(model, inputs, **kw):
        out = real(model, inputs, **kw)
        out["probabilities"] = out["probabilities"] + 1e-3  # a converter that is slightly wrong
        return out

    monkeypatch.setattr(_convert, "run_onnx", skewed)
    target = tmp_path / "m-onnx" / "1" / "model.onnx"
    with pytest.raises(models.VerificationError, match=r"disagrees with the source on 'probabilities'"):
        models.saved_model_to_onnx(export_dir / "3", target)
    assert not (tmp_path / "m-onnx").exists()


def test_an_onnx_out_that_cannot_be_written_fails_before_converting(converted, tmp_path: Path,
                                                                   monkeypatch, capsys: Capture) -> None:
    export_dir, _ = converted
    called = []
    monkeypatch.setattr(_convert, "onnx_from_saved_model", lambda *a, **kw: called.append(a))  # must not run
    (tmp_path / "taken").write_text("a file where the output's folder should be")
    target = tmp_path / "taken" / "model.onnx"
    argv = ["model", "convert", "--saved-model", str(export_dir / "3"), "--onnx-out", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{target}: cannot write the ONNX model here" in err and "Traceback" not in err
    assert called == [] and sorted(os.listdir(tmp_path)) == ["taken"]


def test_no_verify_says_so(converted, tmp_path: Path, capsys: Capture) -> None:
    export_dir, _ = converted
    target = tmp_path / "model.onnx"
    argv = ["model", "convert", "--saved-model", str(export_dir / "3"), "--onnx-out", str(target)]
    argv.append("--no-verify")
    assert main(argv) == 0
    assert "verification skipped" in capsys.readouterr().err
    assert target.is_file()
