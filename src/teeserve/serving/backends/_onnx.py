"""ONNX Runtime servables, loaded from bytes (so an encrypted model is never written in plaintext).

Strategy: the model bytes (decrypted in memory if the file is protected) go straight into
``InferenceSession(bytes, options, providers=["CPUExecutionProvider"])``. A ``serving_default``
predict signature is synthesized from the graph: aliases are the ONNX input/output names, dtypes map
to TensorFlow DataTypes, symbolic dimensions become -1. ``session.run`` is thread-safe, so one
session serves every concurrent request.
"""

from __future__ import annotations

import logging

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._config import ServingOptions
from .._secrets import FileReadError, ModelFiles
from .._tensors import DT
from .._types import DEFAULT_SIGNATURE, PREDICT_METHOD, Code, ServingError, Signature, TensorSpec
from ._base import LoadError, Servable

__all__ = ["OnnxServable", "ONNX_TO_DT"]

log = logging.getLogger("teeserve.serving.onnx")

ONNX_TO_DT = {
    "tensor(float)": DT.FLOAT, "tensor(double)": DT.DOUBLE, "tensor(int32)": DT.INT32,
    "tensor(uint8)": DT.UINT8, "tensor(int16)": DT.INT16, "tensor(int8)": DT.INT8,
    "tensor(string)": DT.STRING, "tensor(int64)": DT.INT64, "tensor(bool)": DT.BOOL,
    "tensor(uint16)": DT.UINT16, "tensor(float16)": DT.HALF, "tensor(uint32)": DT.UINT32,
    "tensor(uint64)": DT.UINT64, "tensor(complex64)": DT.COMPLEX64, "tensor(complex128)": DT.COMPLEX128,
    "tensor(bfloat16)": DT.BFLOAT16,
}


def _spec(arg: Any) -> TensorSpec:
    dtype = ONNX_TO_DT.get(arg.type, DT.INVALID)
    shape = arg.shape
    dims = None if shape is None else tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
    return TensorSpec(arg.name, dtype, dims)


def _unranked_inputs(model: bytes, session: Any) -> frozenset[str]:
    """Inputs that declare no shape at all. ONNX Runtime reports ``[]`` both for them and for real
    scalars, so only when some input reads ``[]`` is the model's graph consulted (rare; it parses the
    whole model once more)."""
    if not any(a.shape == [] for a in session.get_inputs()):
        return frozenset()
    import onnx

    graph = onnx.load_model_from_string(model).graph
    initializers = {t.name for t in graph.initializer}
    return frozenset(v.name for v in graph.input if v.name not in initializers
                     and v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape"))


class OnnxServable(Servable):
    runtime = "ONNXRuntime"

    def __init__(self, session: Any, unranked: frozenset[str] = frozenset()) -> None:
        self._session = session
        inputs = {a.name: _spec(a) for a in session.get_inputs()}
        for name in unranked & inputs.keys():  # no declared shape: any rank (TF's unknown_rank)
            inputs[name] = TensorSpec(name, inputs[name].dtype, None)
        # A sequence or map output (e.g. the ZipMap probabilities of skl2onnx classifiers) has no
        # TensorProto form: it is left out of the signature rather than sent as Python repr text.
        skipped = [f"{a.name} ({a.type})" for a in session.get_outputs() if not str(a.type).startswith("tensor(")]
        outputs = {a.name: _spec(a) for a in session.get_outputs() if str(a.type).startswith("tensor(")}
        if skipped:
            if not outputs:
                raise LoadError(Code.INVALID_ARGUMENT, "the ONNX model has no tensor output to serve (only "
                                f"{', '.join(skipped)}; sequences and maps have no TensorProto form)")
            log.warning("ONNX outputs that are not tensors are left out of the signature: %s", ", ".join(skipped))
        self.signatures = {DEFAULT_SIGNATURE: Signature(PREDICT_METHOD, inputs, outputs)}
        self._string_inputs = {k for k, s in inputs.items() if s.dtype == DT.STRING}

    @classmethod
    def load(cls, files: ModelFiles, options: ServingOptions) -> OnnxServable:
        import onnxruntime as ort

        try:
            model = files.read("model.onnx")
        except FileReadError as exc:
            raise LoadError(Code.DATA_LOSS if exc.permanent else Code.UNAVAILABLE, str(exc),
                            permanent=exc.permanent) from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(0, options.intra_op_threads)
        so.inter_op_num_threads = max(0, options.inter_op_threads)
        if options.onnx_parallel_execution:
            # Only on request (ServingOptions.onnx_parallel_execution): ORT's inter-op threads serve
            # the parallel executor alone, which slows down chain-shaped models such as ResNet.
            so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.log_severity_level = 3
        if options.intra_op_threads == 0:
            # Auto thread count: ORT's pool threads would spin-wait between runs, each burning a core
            # that request threads, TLS and the other sessions need (for a small model the spinning
            # costs more than the model). Sleeping threads wake in microseconds.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            unranked = _unranked_inputs(model, session)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise LoadError(Code.INVALID_ARGUMENT,
                            f"{files.path('model.onnx')}: not a loadable ONNX model: {exc}") from exc
        finally:
            del model
        return cls(session, unranked)

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_aliases: Sequence[str]) -> dict[str, np.ndarray]:
        feed: Mapping[str, Any] = inputs
        if self._string_inputs:
            feed = self._string_feed(inputs)
        try:
            values = self._session.run(list(output_aliases), feed)
        except Exception as exc:
            # Inputs were validated against the signature; what is left are data-dependent failures
            # the model reports (e.g. a shape that only conflicts inside the graph): ORT's
            # InvalidArgument is the client's fault, anything else (Fail, RuntimeException) ours.
            code = Code.INVALID_ARGUMENT if type(exc).__name__ in ("InvalidArgument", "InvalidGraph") \
                else Code.INTERNAL
            raise ServingError(code, f"ONNX Runtime: {exc}") from exc
        out: dict[str, np.ndarray] = {}
        for alias, value in zip(output_aliases, values):
            if isinstance(value, np.ndarray) and value.dtype == object:
                value = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(value)
            out[alias] = value
        return out

    def _string_feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """ONNX Runtime wants ``str`` elements in string tensors; TensorFlow's are ``bytes``."""
        feed: dict[str, Any] = {}
        for name, arr in inputs.items():
            if name in self._string_inputs:
                try:
                    arr = np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v,
                                       otypes=[object])(arr)
                except UnicodeDecodeError:
                    raise ServingError(Code.INVALID_ARGUMENT,
                                       f"input tensor alias {name}: ONNX string inputs must be UTF-8") from None
            feed[name] = arr
        return feed

    def close(self) -> None:
        self._session = None
