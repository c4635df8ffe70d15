"""Request logic over one servable: Predict validation, Classify and Regress over tf.Examples.

Strategy: pure, synchronous functions shared by the async core and by warmup (which replays
records in the loading thread before the version is AVAILABLE). Messages and codes are TensorFlow
Serving's (tf-serving-api.md §9): ``predict_util.cc``, ``classifier.cc``, ``regressor.cc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._proto import pb
from .._tensors import DT, dtype_name, tf_dtype
from .._types import CLASSIFY_METHOD, DEFAULT_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD, Code, ServingError, Signature
from ._base import Servable

__all__ = [
    "PreparedPredict",
    "example_count",
    "find_signature",
    "prepare_predict",
    "serialized_examples",
    "run_classify",
    "run_regress",
    "CLASSIFY_OUTPUT_CLASSES",
    "CLASSIFY_OUTPUT_SCORES",
    "REGRESS_OUTPUT",
]

CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_OUTPUT = "outputs"


def _set(names: Any) -> str:
    return "{" + ",".join(sorted(names)) + "}"


def find_signature(servable: Servable, signature_name: str, api: str = "Predict") -> tuple[str, Signature]:
    """The signature a request names (empty: ``serving_default``); a missing one is reported with the
    code and words of TF Serving's code path for that API (predict_util.cc, classifier.cc and
    regressor.cc, multi_inference.cc)."""
    key = signature_name or DEFAULT_SIGNATURE
    sig = servable.signatures.get(key)
    if sig is None:
        if api == "Predict":
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        if api == "MultiInference":
            raise ServingError(Code.INVALID_ARGUMENT, f"Requested signature not found in model graph: {key}")
        raise ServingError(Code.INVALID_ARGUMENT, f"No signature was found with the name: {key}")
    return key, sig


@dataclass(slots=True)
class PreparedPredict:
    signature_name: str
    signature: Signature
    inputs: dict[str, np.ndarray]
    output_aliases: list[str]
    batch_size: int | None  # common 0-th dimension if every input is batched on it, else None


def prepare_predict(servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                    output_filter: Sequence[str] = (), *, check_method: bool = False) -> PreparedPredict:
    """Check a Predict request against its signature; raise ServingError with TF Serving's words.

    ``check_method``: ``--enable_signature_method_name_check`` (the signature must be a predict one).
    """
    key, sig = find_signature(servable, signature_name)
    if check_method and sig.method_name != PREDICT_METHOD:
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected prediction signature method_name to be "
                                                  f"{PREDICT_METHOD}. Was: {sig.method_name}")
    if inputs.keys() != sig.inputs.keys():  # the words of TF Serving for each way they differ
        sent, expected = set(inputs), set(sig.inputs)
        if len(sent) != len(expected):
            raise ServingError(
                Code.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} len({_set(sent)}) != "
                f"len({_set(expected)}). Sent extra: {_set(sent - expected)}. "
                f"Missing but required: {_set(expected - sent)}.")
        alias = min(sent - expected)
        raise ServingError(Code.INVALID_ARGUMENT, f"input tensor alias not found in signature: {alias}. "
                                                  f"Inputs expected to be in the set {_set(expected)}.")
    aliases: list[str] = []
    if output_filter:
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {alias} "
                                   f"Outputs expected to be in the set {_set(sig.outputs)}.")
            if alias in seen:
                raise ServingError(Code.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
            seen.add(alias)
            aliases.append(alias)
    else:
        aliases = sorted(sig.outputs)
    checked: dict[str, np.ndarray] = {}
    batch: int | None = -1
    for i, alias in enumerate(sorted(sig.inputs)):
        spec = sig.inputs[alias]
        arr = np.asarray(inputs[alias])
        got = tf_dtype(arr.dtype)
        if got != spec.dtype:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expects arg[{i}] to be {dtype_name(spec.dtype)} but {dtype_name(got)} is "
                               f"provided (input tensor alias {alias})")
        if spec.dtype == DT.STRING and arr.dtype != object:
            arr = arr.astype(object)
        if spec.shape is not None:
            if arr.ndim != len(spec.shape) or any(
                    want >= 0 and want != have for want, have in zip(spec.shape, arr.shape)):
                raise ServingError(Code.INVALID_ARGUMENT,
                                   f"input tensor alias {alias} has shape {list(arr.shape)} but the "
                                   f"signature expects {list(spec.shape)} (-1 = any size)")
        # Batchable only if the signature leaves dimension 0 free and every input agrees on it.
        if batch is not None:
            if spec.shape is None or not spec.shape or spec.shape[0] != -1 or arr.ndim == 0:
                batch = None
            elif batch == -1:
                batch = arr.shape[0]
            elif batch != arr.shape[0]:
                batch = None
        checked[alias] = arr
    return PreparedPredict(key, sig, checked, aliases, None if batch in (None, -1) else batch)


# -- Classify / Regress ---------------------------------------------------------------------------


def example_count(input_proto: Any) -> int:
    """How many tf.Examples a ``tensorflow.serving.Input`` carries (TF's request_example_counts)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return len(input_proto.example_list.examples)
    if kind == "example_list_with_context":
        return len(input_proto.example_list_with_context.examples)
    return 0


def serialized_examples(input_proto: Any) -> list[bytes]:
    """Serialized tf.Examples of a ``tensorflow.serving.Input`` (context features merged in)."""
    cls = pb.Input
    msg = input_proto if isinstance(input_proto, cls) else cls.FromString(input_proto.SerializeToString())
    kind = msg.WhichOneof("kind")
    if kind == "example_list":
        out = [e.SerializeToString() for e in msg.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = msg.example_list_with_context.context
        out = []
        for e in msg.example_list_with_context.examples:
            merged = pb.Example()
            merged.CopyFrom(ctx)
            for name, feat in e.features.feature.items():
                merged.features.feature[name].CopyFrom(feat)  # the example's own feature wins
            out.append(merged.SerializeToString())
    else:
        raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
    if not out:
        raise ServingError(Code.INVALID_ARGUMENT, "Input is empty.")
    return out


def _single_string_input(sig: Signature, what: str) -> str:
    if len(sig.inputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, "Expected one input Tensor.")
    (alias, spec), = sig.inputs.items()
    if spec.dtype != DT.STRING:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"{what} signature input must be DT_STRING (serialized tf.Example), "
                           f"got {dtype_name(spec.dtype)}")
    return alias


def _check_method(sig: Signature, method: str, what: str, strict: bool) -> None:
    """TF Serving does not check method names by default and runs any signature of the right shape;
    a signature of another method that does not fit is reported by its method name, the clearest
    reason (e.g. Classify on an ONNX model's predict signature)."""
    if sig.method_name == method or (sig.method_name == "" and not strict):
        return
    if strict:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected {what} signature method_name to be {method}. Was: {sig.method_name}")
    outputs_fit = (CLASSIFY_OUTPUT_CLASSES in sig.outputs or CLASSIFY_OUTPUT_SCORES in sig.outputs) \
        if what == "classification" else list(sig.outputs) == [REGRESS_OUTPUT]
    inputs_fit = len(sig.inputs) == 1 and next(iter(sig.inputs.values())).dtype == DT.STRING
    if not (outputs_fit and inputs_fit):
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected {what} signature method_name to be {method}. Was: {sig.method_name}")


def run_classify(servable: Servable, signature_name: str, input_proto: Any, *,
                 check_method: bool = False, multi: bool = False) -> tuple[str, Any]:
    """(signature key, ``ClassificationResult``) for a Classify request (``multi``: for a task of a
    MultiInference request, which words a missing signature its own way)."""
    key, sig = find_signature(servable, signature_name, "MultiInference" if multi else "Classify")
    _check_method(sig, CLASSIFY_METHOD, "classification", check_method)
    alias = _single_string_input(sig, "classification")
    if len(sig.outputs) not in (1, 2):
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected one or two output Tensors, found {len(sig.outputs)}")
    wanted = [a for a in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES) if a in sig.outputs]
    if not wanted:
        raise ServingError(Code.INVALID_ARGUMENT, 'Expected classification signature outputs to contain at '
                                                  'least one of "classes" and "scores".')
    examples = serialized_examples(input_proto)
    n = len(examples)
    out = servable.run(key, {alias: np.array(examples, dtype=object)}, wanted)
    classes = out.get(CLASSIFY_OUTPUT_CLASSES)
    scores = out.get(CLASSIFY_OUTPUT_SCORES)
    if classes is not None:
        if classes.dtype != object:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expected classes Tensor of DT_STRING. Got: {dtype_name(tf_dtype(classes.dtype))}")
        if classes.ndim != 2 or classes.shape[0] != n:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected Tensor shape: [{n} num_classes] but got "
                                                      f"{list(classes.shape)}")
    if scores is not None:
        if scores.dtype != np.float32:
            raise ServingError(Code.INVALID_ARGUMENT,
                               f"Expected scores Tensor of DT_FLOAT. Got: {dtype_name(tf_dtype(scores.dtype))}")
        if scores.ndim != 2 or scores.shape[0] != n:
            raise ServingError(Code.INVALID_ARGUMENT, f"Expected Tensor shape: [{n} num_classes] but got "
                                                      f"{list(scores.shape)}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise ServingError(Code.INVALID_ARGUMENT, f"Tensors class and score should match in shape: "
                                                  f"{list(classes.shape)} vs {list(scores.shape)}")
    result = pb.ClassificationResult()
    k = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    for i in range(n):
        c = result.classifications.add()
        for j in range(k):
            cl = c.classes.add()
            if classes is not None:
                v = classes[i, j]
                cl.label = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            if scores is not None:
                cl.score = float(scores[i, j])
    return key, result


def run_regress(servable: Servable, signature_name: str, input_proto: Any, *,
                check_method: bool = False, multi: bool = False) -> tuple[str, Any]:
    """(signature key, ``RegressionResult``) for a Regress request (``multi``: as for run_classify)."""
    key, sig = find_signature(servable, signature_name, "MultiInference" if multi else "Regress")
    _check_method(sig, REGRESS_METHOD, "regression", check_method)
    alias = _single_string_input(sig, "regression")
    if len(sig.outputs) != 1:
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected one output Tensor, found {len(sig.outputs)}")
    if REGRESS_OUTPUT not in sig.outputs:
        raise ServingError(Code.INVALID_ARGUMENT, f'No output Tensor named "{REGRESS_OUTPUT}" '
                                                  "found in the regression signature.")
    examples = serialized_examples(input_proto)
    n = len(examples)
    values = servable.run(key, {alias: np.array(examples, dtype=object)}, [REGRESS_OUTPUT])[REGRESS_OUTPUT]
    if values.dtype != np.float32:
        raise ServingError(Code.INVALID_ARGUMENT,
                           f"Expected output Tensor of DT_FLOAT. Got: {dtype_name(tf_dtype(values.dtype))}")
    if not (values.shape == (n,) or values.shape == (n, 1)):
        raise ServingError(Code.INVALID_ARGUMENT, f"Expected output Tensor shape to be either [{n}] or "
                                                  f"[{n}, 1] but got {list(values.shape)}")
    result = pb.RegressionResult()
    for v in values.reshape(-1):
        result.regressions.add(value=float(v))
    return key, result
