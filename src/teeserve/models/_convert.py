"""Model conversion: frozen GraphDef -> SavedModel (TensorFlow backend) and SavedModel -> ONNX.

Strategy: the reference deployment converts a downloaded frozen graph with
``model_graph_to_saved_model.py`` (a TF1 ``SavedModelBuilder`` with one ``serving_default`` predict
signature whose aliases are the tensor names). We do the same with ``tf.compat.v1`` so the result is
what TensorFlow Serving loads, then convert SavedModels to ONNX with tf2onnx for the fast backend,
naming the ONNX inputs and outputs after the signature aliases so a request is identical for both.

Every conversion is checked before it is installed: the source and the converted model run on the
same seeded random input and must agree (see ``_check``). Output is staged and renamed into place
(``_layout``), so a bad input, a failed conversion or a mismatch leaves no output behind.
TensorFlow, tf2onnx and ONNX Runtime are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import UsageError
from .._io import atomic_output
from ._check import ONNX, SAME_GRAPH, Comparison, compare_outputs, random_input
from ._errors import (
    ConversionError,
    ModelFormatError,
    UnknownSignatureError,
    UnknownTensorError,
)
from ._layout import (
    check_absent,
    import_tensorflow,
    install,
    parent_dirs,
    quiet_tensorflow,
    staging_dir,
    version_dir,
)

__all__ = ["frozen_graph_to_saved_model", "saved_model_to_onnx", "read_graph_def", "DEFAULT_SIGNATURE"]

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
VERIFY_SEED = 20240501

Log = Callable[[str], None]


def _nolog(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------------
# frozen GraphDef -> SavedModel


def read_graph_def(pb_path: str | os.PathLike[str]) -> Any:
    """Parse a frozen GraphDef (binary protobuf) from ``pb_path``.

    Raises:
        ModelFormatError: the file is missing, unreadable, not a GraphDef or has no nodes.
    """
    import_tensorflow()
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework import graph_pb2

    path = Path(pb_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, not a frozen graph .pb file") from None
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read: {exc.strerror}") from exc
    graph_def = graph_pb2.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a TensorFlow GraphDef (binary protobuf): {exc}") from exc
    if not graph_def.node:
        raise ModelFormatError(f"{path}: not a frozen graph (the GraphDef has no nodes)")
    if any(n.op in ("VariableV2", "VarHandleOp") for n in graph_def.node):
        raise ModelFormatError(
            f"{path}: the graph still has variables; freeze it first "
            "(convert_variables_to_constants) or export it as a SavedModel"
        )
    return graph_def


def _tensor_name(name: str) -> str:
    name = name.strip()
    return name if ":" in name else f"{name}:0"


def _alias(name: str) -> str:
    name = name.strip()
    return name[:-2] if name.endswith(":0") else name


def _parse_names(names: str | Sequence[str], what: str) -> list[str]:
    items = [names] if isinstance(names, str) else list(names)
    out = [n.strip() for item in items for n in item.split(",") if n.strip()]
    if not out:
        raise UsageError(f"no {what} tensor names given")
    aliases = [_alias(n) for n in out]
    if len(set(aliases)) != len(aliases):
        raise UsageError(f"{what} tensor names repeat: {', '.join(out)}")
    return out


def _lookup(graph: Any, name: str, kind: str, origin: str) -> Any:
    try:
        return graph.get_tensor_by_name(_tensor_name(name))
    except (KeyError, ValueError):
        raise UnknownTensorError(kind, name, _candidates(graph, kind)(), origin) from None


def _import_graph_def(tf: Any, graph_def: Any, origin: str) -> Any:
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFormatError(f"{origin}: TensorFlow cannot import the graph: {msg}") from exc
    return graph


def _candidates(graph: Any, kind: str) -> Callable[[], list[str]]:
    def placeholders() -> list[str]:
        return [op.name for op in graph.get_operations() if op.type == "Placeholder"]

    def sinks() -> list[str]:
        # graph sinks, and the named tensors they merely forward (tf.function adds Identity outputs)
        consumed = {t.op.name for op in graph.get_operations() for t in op.inputs}
        names: list[str] = []
        for op in graph.get_operations():
            if op.name in consumed or not op.outputs or op.type in ("Const", "NoOp", "Placeholder"):
                continue
            while op is not None and op.name not in names:
                names.append(op.name)
                op = op.inputs[0].op if op.type == "Identity" and op.inputs else None
        return names

    return placeholders if kind == "input" else sinks


def export_graph_def(
    graph_def: Any,
    target: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    origin: str = "graph",
    verify: bool = True,
    log: Log = _nolog,
) -> Comparison | None:
    """Write ``graph_def`` as a SavedModel at ``target`` (which must not exist) and verify it.

    The signature ``serving_default`` (method ``tensorflow/serving/predict``) maps alias ``name``
    (the tensor name without ``:0``) to each input and output tensor.
    """
    tf = import_tensorflow()
    with quiet_tensorflow():
        graph = _import_graph_def(tf, graph_def, origin)
        in_t = {_alias(n): _lookup(graph, n, "input", origin) for n in inputs}
        out_t = {_alias(n): _lookup(graph, n, "output", origin) for n in outputs}
        for alias, t in in_t.items():
            if t.dtype == tf.resource:
                raise UsageError(f"input {alias!r} is a resource handle, not a tensor that can be fed")

        t0 = time.monotonic()
        try:
            with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
                signature = tf.compat.v1.saved_model.predict_signature_def(in_t, out_t)
                builder = tf.compat.v1.saved_model.Builder(str(target))
                builder.add_meta_graph_and_variables(
                    sess,
                    [SERVE_TAG],
                    signature_def_map={DEFAULT_SIGNATURE: signature},
                    strip_default_attrs=True,
                    clear_devices=True,
                )
                builder.save()
        except (ValueError, TypeError, OSError, tf.errors.OpError) as exc:
            raise ConversionError(f"{origin}: cannot write the SavedModel: {exc}") from exc
        log(f"wrote SavedModel ({_size(target)}) in {time.monotonic() - t0:.1f} s")
        if not verify:
            log("verification skipped (--no-verify)")
            return None

        rng = np.random.default_rng(VERIFY_SEED)
        feed = {}
        for alias, t in in_t.items():
            shape = t.shape.as_list() if t.shape.rank is not None else None
            feed[alias] = random_input(alias, shape, t.dtype.as_numpy_dtype, rng)
        with tf.compat.v1.Session(graph=graph) as sess:
            try:
                source = sess.run(out_t, {in_t[a]: v for a, v in feed.items()})
            except tf.errors.OpError as exc:
                raise _source_failed(origin, exc) from exc
        try:
            converted = _run_saved_model_v1(tf, target, DEFAULT_SIGNATURE, feed)
        except (ValueError, tf.errors.OpError) as exc:
            raise ConversionError(f"{origin}: the written SavedModel does not run: {exc}") from exc
        comparison = compare_outputs(source, converted, SAME_GRAPH)
        comparison.raise_for_mismatch(f"{origin} -> SavedModel")
        log(f"verified SavedModel against the frozen graph on random input: {comparison.summary()}")
        return comparison


def _source_failed(origin: str, exc: Exception) -> ConversionError:
    msg = (getattr(exc, "message", None) or str(exc)).splitlines()[0]
    return ConversionError(
        f"{origin}: the source model fails on random input, so the conversion cannot be verified: {msg} "
        "(use --no-verify to convert without checking)"
    )


def _run_saved_model_v1(
    tf: Any, path: Path, signature: str, feed: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Run a signature the way TensorFlow Serving does: a session on the tensors the SignatureDef names."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], str(path))
        sig = meta.signature_def[signature]
        fetches = {alias: info.name for alias, info in sig.outputs.items()}
        return sess.run(fetches, {sig.inputs[alias].name: value for alias, value in feed.items()})


def frozen_graph_to_saved_model(
    pb_path: str | os.PathLike[str],
    export_dir: str | os.PathLike[str],
    version: int,
    inputs: str | Sequence[str],
    outputs: str | Sequence[str],
    *,
    force: bool = False,
    verify: bool = True,
    log: Log | None = None,
) -> Path:
    """Convert a frozen GraphDef to a SavedModel at ``export_dir/<version>/`` (the reference's step 1.3).

    ``inputs``/``outputs`` are tensor names (``input`` or ``input:0``; a list or comma-separated);
    the ``serving_default`` signature's aliases are those names without ``:0``. The result is checked
    against the frozen graph on random input (same graph, so the tolerance is tight) before it is
    renamed into place.

    Returns:
        The version folder.

    Raises:
        ModelFormatError: ``pb_path`` is missing or not a frozen GraphDef.
        UnknownTensorError: an input or output name is not in the graph (the error lists candidates).
        OutputExists: the version folder exists and ``force`` is false.
        ConversionError, VerificationError: the SavedModel could not be written or computes otherwise.
        UsageError: bad version number or tensor list.
    """
    log = log or _nolog
    target = version_dir(export_dir, version)
    check_absent(target, force)
    in_names, out_names = _parse_names(inputs, "input"), _parse_names(outputs, "output")
    graph_def = read_graph_def(pb_path)
    with staging_dir(export_dir) as stage:
        staged = stage / "saved_model"
        export_graph_def(
            graph_def, staged, in_names, out_names, origin=os.fspath(pb_path), verify=verify, log=log
        )
        install(staged, target, force=force)
    return target


# ---------------------------------------------------------------------------------------------------
# SavedModel -> ONNX


def _check_saved_model(path: Path, signature: str) -> None:
    """Fail early, with the file named, when ``path`` is not a SavedModel with ``signature``."""
    import_tensorflow()
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    if not path.is_dir():
        raise ModelFormatError(f"{path}: no such SavedModel folder")
    pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
    proto = saved_model_pb2.SavedModel()
    try:
        if pb.is_file():
            proto.ParseFromString(pb.read_bytes())
        elif pbtxt.is_file():
            text_format.Parse(pbtxt.read_text(), proto)
        else:
            raise ModelFormatError(f"{path}: not a SavedModel (no saved_model.pb)")
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: saved_model.pb is not a SavedModel protobuf: {exc}") from exc
    metas = [m for m in proto.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    if not metas:
        raise ModelFormatError(f"{path}: the SavedModel has no meta graph tagged {SERVE_TAG!r}")
    names = sorted(k for k in metas[0].signature_def if not k.startswith("__"))
    if signature not in names:
        raise UnknownSignatureError(os.fspath(path), signature, names)


def onnx_from_saved_model(
    saved_model_dir: Path,
    *,
    signature: str = DEFAULT_SIGNATURE,
    opset: int | None = None,
    verify: bool = True,
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    log: Log = _nolog,
) -> tuple[bytes, Comparison | None]:
    """Convert one signature of a SavedModel to a serialized ONNX model and verify it (no file output)."""
    tf = import_tensorflow()
    _check_saved_model(saved_model_dir, signature)
    import onnx
    import tf2onnx
    from tf2onnx import constants as tf2onnx_constants
    from tf2onnx import tf_loader

    if opset is not None and opset not in tf2onnx_constants.OPSET_TO_IR_VERSION:
        known = sorted(tf2onnx_constants.OPSET_TO_IR_VERSION)
        raise UsageError(f"ONNX opset {opset} is not supported by tf2onnx; use {known[0]}..{known[-1]}")
    origin = os.fspath(saved_model_dir)
    t0 = time.monotonic()
    with quiet_tensorflow():
        try:
            graph_def, in_names, out_names, concrete, _imported, tables, renames = tf_loader.from_saved_model(
                origin,
                None,
                None,
                tag=[SERVE_TAG],
                signatures=[signature],
                return_concrete_func=True,
                return_initialized_tables=True,
                return_tensors_to_rename=True,
            )
        except Exception as exc:  # tf2onnx raises bare ValueError/AssertionError/TF errors
            raise ConversionError(f"{origin}: cannot load the SavedModel for conversion: {exc}") from exc
        if tables:
            raise ConversionError(f"{origin}: models with lookup tables are not supported by this converter")
        try:
            model_proto, _ = tf2onnx.convert.from_graph_def(
                graph_def,
                name=Path(origin).parent.name or "model",
                input_names=in_names,
                output_names=out_names,
                opset=opset,
                tensors_to_rename=renames,
            )
        except Exception as exc:
            raise ConversionError(f"{origin}: tf2onnx failed: {exc}") from exc
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"{origin}: tf2onnx produced an invalid ONNX model: {exc}") from exc

    in_specs = concrete.structured_input_signature[1]
    want_in = sorted(in_specs)
    want_out = sorted(concrete.structured_outputs)
    got_in = sorted(i.name for i in model_proto.graph.input)
    got_out = sorted(o.name for o in model_proto.graph.output)
    if got_in != want_in or got_out != want_out:
        raise ConversionError(
            f"{origin}: ONNX names {got_in} -> {got_out} do not match signature {signature!r} "
            f"aliases {want_in} -> {want_out}"
        )
    if model_proto.ByteSize() >= 2**31:
        raise ConversionError(f"{origin}: the ONNX model exceeds protobuf's 2 GB limit (not supported)")
    data = model_proto.SerializeToString()
    took = time.monotonic() - t0
    log(f"converted signature {signature!r} to ONNX opset {_opset(model_proto)} in {took:.1f} s")
    if not verify:
        log("verification skipped (--no-verify)")
        return data, None

    if sample_inputs is None:
        rng = np.random.default_rng(VERIFY_SEED)
        sample_inputs = {
            alias: random_input(
                alias,
                spec.shape.as_list() if spec.shape.rank is not None else None,
                spec.dtype.as_numpy_dtype,
                rng,
            )
            for alias, spec in in_specs.items()
        }
    try:
        result = concrete(**{k: tf.constant(v) for k, v in sample_inputs.items()})
        source = {k: v.numpy() for k, v in result.items()}
    except (tf.errors.OpError, ValueError, TypeError) as exc:
        raise _source_failed(origin, exc) from exc
    converted = run_onnx(data, sample_inputs, origin=origin)
    comparison = compare_outputs(source, converted, ONNX)
    comparison.raise_for_mismatch(f"{origin} -> ONNX")
    log(f"verified ONNX against the SavedModel: {comparison.summary()}")
    return data, comparison


def run_onnx(
    model: bytes | str | os.PathLike[str], inputs: Mapping[str, np.ndarray], *, origin: str = "ONNX model"
) -> dict[str, np.ndarray]:
    """Run an ONNX model with ONNX Runtime (CPU) and return its outputs by name."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ConversionError(f"{origin}: ONNX Runtime cannot load the converted model: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, dict(inputs))
    except Exception as exc:  # same: onnxruntime's errors have no common Python base class
        raise ConversionError(f"{origin}: the converted ONNX model fails to run: {exc}") from exc
    return dict(zip(names, results, strict=True))


def saved_model_to_onnx(
    saved_model_dir: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    signature: str = DEFAULT_SIGNATURE,
    force: bool = False,
    verify: bool = True,
    log: Log | None = None,
) -> Path:
    """Convert a SavedModel's ``signature`` to ONNX at ``onnx_path`` with tf2onnx.

    ONNX input and output names are the signature's aliases, so REST/gRPC requests are the same for
    the TensorFlow and ONNX backends. The ONNX model is run with ONNX Runtime on the same random input
    as the SavedModel and must agree within ``rtol=1e-3, atol=1e-5`` before the file is written.

    Returns:
        ``onnx_path``.

    Raises:
        ModelFormatError: ``saved_model_dir`` is not a SavedModel.
        UnknownSignatureError: no such signature (the error lists them).
        OutputExists: ``onnx_path`` exists and ``force`` is false.
        ConversionError, VerificationError: tf2onnx failed or the ONNX model computes otherwise.
        UsageError: unsupported opset.
    """
    target = Path(onnx_path)
    check_absent(target, force)
    # The output file is opened (beside its target) before converting: a folder that cannot be
    # written fails now, not after minutes of tf2onnx.
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(parent_dirs(target))
            fh = stack.enter_context(atomic_output(target, overwrite=force))
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, (FileExistsError, NotADirectoryError)):
                why = "a file stands where its folder should be"
            raise UsageError(f"{target}: cannot write the ONNX model here: {why}") from exc
        data, _ = onnx_from_saved_model(
            Path(saved_model_dir), signature=signature, opset=opset, verify=verify, log=log or _nolog
        )
        fh.write(data)
    return target


def _opset(model_proto: Any) -> int:
    return next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB" if total >= 1e6 else f"{total / 1e3:.1f} kB"
