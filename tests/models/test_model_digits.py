"""The digits demo model: layout, signatures, ONNX twin, warmup file, samples, preprocessing."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from teeserve import TeeserveError, models
from teeserve._io import OutputExists
from teeserve.cli import main



def _examples(tf, images: np.ndarray) -> list[bytes]:
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=img.ravel().tolist()))
                }
            )
        ).SerializeToString()
        for img in images
    ]


def test_layout(digits: models.DemoModel) -> None:
    root = digits.saved_model_dir.parent.parent
    assert digits.saved_model_dir == root / "digits" / "1"
    assert (digits.saved_model_dir / "saved_model.pb").is_file()
    assert (digits.saved_model_dir / "variables" / "variables.index").is_file()
    assert list((digits.saved_model_dir / "variables").glob("variables.data-*"))
    assert digits.warmup_file == digits.saved_model_dir / "assets.extra" / "tf_serving_warmup_requests"
    assert digits.warmup_file.is_file()
    assert digits.onnx_path == root / "digits-onnx" / "1" / "model.onnx"
    assert digits.onnx_path.is_file()
    assert sorted(os.listdir(root)) == ["digits", "digits-onnx"]  # no staging leftovers
    assert os.listdir(digits.onnx_path.parent) == ["model.onnx"]
    samples_dir = root.parent / "samples"
    assert sorted(p.name for p in samples_dir.iterdir()) == sorted(p.name for p in digits.samples)
    assert {p.name for p in digits.samples} == {f"digit_{d}_{n}.png" for d in range(10) for n in range(2)}


def test_weights_are_variables_not_graph_constants(digits: models.DemoModel) -> None:
    # the trained weights live once, in variables/; the graph holds only their shapes
    assert (digits.saved_model_dir / "saved_model.pb").stat().st_size < 100_000
    data = digits.saved_model_dir / "variables" / "variables.data-00000-of-00001"
    assert data.stat().st_size > 4 * 38_000


def test_accuracy(digits: models.DemoModel) -> None:
    assert digits.accuracy is not None and digits.accuracy > 0.9
    assert digits.onnx_accuracy is not None and digits.onnx_accuracy > 0.9


def test_serving_default_signature(tf, digits_signatures) -> None:
    assert {"serving_default", "classify", "regress"} <= set(digits_signatures.keys())
    fn = digits_signatures["serving_default"]
    (spec,) = fn.structured_input_signature[1].values()
    assert list(fn.structured_input_signature[1]) == ["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 8, 8]
    outs = fn.structured_outputs
    assert set(outs) == {"probabilities", "classes"}
    assert outs["probabilities"].dtype == tf.float32 and outs["probabilities"].shape.as_list() == [None, 10]
    assert outs["classes"].dtype == tf.int64 and outs["classes"].shape.as_list() == [None]


def test_signature_methods_for_tensorflow_serving(digits: models.DemoModel, saved_model_proto) -> None:
    from tensorflow.core.framework import types_pb2

    (meta,) = saved_model_proto(digits.saved_model_dir).meta_graphs
    assert list(meta.meta_info_def.tags) == ["serve"]
    sigs = meta.signature_def
    assert sigs["serving_default"].method_name == "tensorflow/serving/predict"
    assert sigs["classify"].method_name == "tensorflow/serving/classify"
    assert sigs["regress"].method_name == "tensorflow/serving/regress"
    assert set(sigs["classify"].inputs) == {"inputs"}
    assert sigs["classify"].inputs["inputs"].dtype == types_pb2.DT_STRING
    assert sigs["classify"].outputs["classes"].dtype == types_pb2.DT_STRING
    assert sigs["classify"].outputs["scores"].dtype == types_pb2.DT_FLOAT
    assert set(sigs["regress"].outputs) == {"outputs"}
    assert sigs["regress"].outputs["outputs"].dtype == types_pb2.DT_FLOAT
    # MultiInference needs every task's signature to read the same input tensor
    assert sigs["classify"].inputs["inputs"].name == sigs["regress"].inputs["inputs"].name


def test_predict_classify_regress_on_real_digits(tf, digits_signatures, held_out) -> None:
    x, y = held_out
    predicted = digits_signatures["serving_default"](images=tf.constant(x))
    classes = predicted["classes"].numpy()
    probabilities = predicted["probabilities"].numpy()
    assert np.mean(classes == y) > 0.9
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(np.argmax(probabilities, axis=1), classes)

    examples = tf.constant(_examples(tf, x[:50]))
    classified = digits_signatures["classify"](inputs=examples)
    labels = classified["classes"].numpy()
    assert labels.shape == (50, 10) and labels[0].tolist() == [str(i).encode() for i in range(10)]
    np.testing.assert_allclose(classified["scores"].numpy(), probabilities[:50], atol=1e-6)
    regressed = digits_signatures["regress"](inputs=examples)["outputs"].numpy()
    assert regressed.dtype == np.float32
    assert np.array_equal(regressed, classes[:50].astype(np.float32))


def test_onnx_names_and_shapes(digits: models.DemoModel) -> None:
    session = ort.InferenceSession(str(digits.onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [8, 8]
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    outs = {o.name: o for o in session.get_outputs()}
    assert set(outs) == {"probabilities", "classes"}
    assert outs["probabilities"].type == "tensor(float)" and outs["probabilities"].shape[1:] == [10]
    assert outs["classes"].type == "tensor(int64)" and len(outs["classes"].shape) == 1


def test_onnx_agrees_with_saved_model_on_real_digits(tf, digits, digits_signatures, held_out) -> None:
    x, y = held_out
    session = ort.InferenceSession(str(digits.onnx_path), providers=["CPUExecutionProvider"])
    probabilities, classes = session.run(["probabilities", "classes"], {"images": x})
    reference = digits_signatures["serving_default"](images=tf.constant(x))
    np.testing.assert_allclose(probabilities, reference["probabilities"].numpy(), rtol=1e-3, atol=1e-5)
    assert np.array_equal(classes, reference["classes"].numpy())
    assert np.mean(classes == y) == pytest.approx(digits.onnx_accuracy)


def test_warmup_file_is_prediction_log_records(tf, digits, digits_signatures) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(digits.warmup_file))]
    assert 1 <= len(records) <= 1000
    batches = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "digits"
        assert request.model_spec.signature_name == "serving_default"
        assert set(request.inputs) == {"images"}
        images = tf.make_ndarray(request.inputs["images"])
        assert images.dtype == np.float32 and images.shape[1:] == (8, 8)
        assert 0 <= images.min() and images.max() <= 16
        batches.append(images.shape[0])
        out = digits_signatures["serving_default"](images=tf.constant(images))
        assert out["classes"].shape == (images.shape[0],)
    assert len(records) >= 3 and len(set(batches)) > 1


def test_sample_images_classify_correctly(tf, digits, digits_signatures) -> None:
    assert len(digits.samples) == 20
    for path in digits.samples:
        label = int(re.fullmatch(r"digit_(\d)_\d\.png", path.name).group(1))
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (64, 64)
        pixels = models.digits_image_to_input(path)
        assert pixels.shape == (8, 8) and pixels.dtype == np.float32
        assert pixels.min() >= 0 and pixels.max() <= 16
        out = digits_signatures["serving_default"](images=tf.constant(pixels[None]))
        assert int(out["classes"].numpy()[0]) == label, path.name


def test_png_round_trip_is_close(held_out) -> None:
    x, _ = held_out
    for digit in x[:20]:
        png = models.digits_input_to_png(digit)
        back = models.digits_image_to_input(png)
        assert np.max(np.abs(back - digit)) < 16 / 255 + 1e-6


def test_image_to_input_accepts_bytes_path_and_pil(tmp_path: Path, held_out) -> None:
    digit = held_out[0][3]
    png = models.digits_input_to_png(digit, size=32)
    path = tmp_path / "d.png"
    path.write_bytes(png)
    from_bytes = models.digits_image_to_input(png)
    np.testing.assert_array_equal(models.digits_image_to_input(str(path)), from_bytes)
    np.testing.assert_array_equal(models.digits_image_to_input(path), from_bytes)
    with Image.open(io.BytesIO(png)) as img:
        np.testing.assert_array_equal(models.digits_image_to_input(img), from_bytes)
    # a colour JPEG-like RGB picture and a transparent PNG (ink on transparent) give the same digit
    rgb = Image.open(io.BytesIO(png)).convert("RGB")
    np.testing.assert_allclose(models.digits_image_to_input(rgb), from_bytes, atol=0.1)
    alpha = np.asarray(Image.open(io.BytesIO(png)), dtype=np.uint8)
    rgba = np.zeros(alpha.shape + (4,), np.uint8)
    rgba[..., 3] = 255 - alpha  # black ink whose opacity is the ink density
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    np.testing.assert_allclose(models.digits_image_to_input(buf.getvalue()), from_bytes, atol=0.1)


def test_image_to_input_errors(tmp_path: Path) -> None:
    with pytest.raises(models.ModelFormatError, match="no such file"):
        models.digits_image_to_input(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(models.ModelFormatError, match="bad.png: not a readable image"):
        models.digits_image_to_input(bad)
    with pytest.raises(models.ModelFormatError, match="not a readable image"):
        models.digits_image_to_input(b"\x89PNG\r\n\x1a\ntruncated")


def test_make_digits_refuses_to_overwrite(digits: models.DemoModel) -> None:
    before = (digits.saved_model_dir / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(OutputExists, match="already exists"):
        models.make_digits(digits.base_path.parent)
    assert (digits.saved_model_dir / "saved_model.pb").stat().st_mtime_ns == before


def test_bad_model_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TeeserveError, match="plain folder name"):
        models.make_digits(tmp_path, name="../escape")
    assert list(tmp_path.iterdir()) == []


def test_cli_make_demo_prints_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models"
    rc = main(["model", "make-demo", "-o", str(out), "--name", "mnistish", "--no-onnx"])
    assert rc == 0
    stdout = capsys.readouterr().out
    match = re.search(r"test accuracy \(held-out\): SavedModel (\d\.\d+)", stdout)
    assert match and float(match.group(1)) > 0.9
    assert str(out / "mnistish" / "1") in stdout
    assert (out / "mnistish" / "1" / "saved_model.pb").is_file()
    assert not (out / "mnistish-onnx").exists()
    assert len(list((tmp_path / "samples").glob("digit_*_*.png"))) == 20
    # again without --force: refused with one line and exit code 1
    rc = main(["model", "make-demo", "-o", str(out), "--name", "mnistish", "--no-onnx"])
    assert rc == 1
    assert "already exists (use --force" in capsys.readouterr().err


def test_importing_the_toolkit_and_cli_does_not_import_tensorflow() -> None:
    code = (
        "import sys, teeserve.models, teeserve.cli\n"
        "teeserve.cli.build_parser()\n"
        "teeserve.models.digits_image_to_input(teeserve.models.digits_input_to_png([[0]*8]*8))\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_names_are_exactly_all() -> None:
    public = {n for n in dir(models) if not n.startswith("_") and n != "annotations"}
    assert public == set(models.__all__)
    assert issubclass(models.ModelError, TeeserveError)


def test_model_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model"]) == 2
    assert "make-demo" in capsys.readouterr().out


def test_output_folder_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models").write_text("a file")
    assert main(["model", "make-demo", "-o", str(tmp_path / "models"), "--no-onnx"]) == 2
    assert "cannot create an output folder" in capsys.readouterr().err


def test_unwritable_samples_leave_no_model(tmp_path: Path) -> None:
    (tmp_path / "samples").write_text("a file where the samples folder should be")
    with pytest.raises(TeeserveError, match="cannot write the outputs"):
        models.make_digits(tmp_path / "models", samples_out=tmp_path / "samples", onnx=False)
    assert os.listdir(tmp_path) == ["samples"]  # the models folder it made is gone again


def test_a_failed_onnx_install_takes_back_the_model_and_samples_and_restores_what_force_replaced(
        tmp_path: Path) -> None:
    """The ONNX copy is installed last; when that fails (here a file stands where its folder must be),
    the SavedModel and samples this run put in are taken back, and those --force was replacing are
    there again, as they were."""
    out, samples = tmp_path / "models", tmp_path / "samples"
    models.make_digits(out, samples_out=samples, onnx=False, seed=1)
    before = {p: p.read_bytes() for p in sorted([*out.rglob("*"), *samples.rglob("*")]) if p.is_file()}
    (out / "digits-onnx").write_text("a file where the ONNX model's folder should be")
    with pytest.raises(TeeserveError, match="cannot write the outputs"):
        models.make_digits(out, samples_out=samples, onnx=True, seed=2, force=True)
    after = {p: p.read_bytes() for p in sorted([*out.rglob("*"), *samples.rglob("*")]) if p.is_file()
             and p.name != "digits-onnx"}
    assert after == before  # byte for byte: the seed-1 model and samples, nothing set aside left over

