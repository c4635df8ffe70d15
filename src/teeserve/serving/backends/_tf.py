"""TensorFlow SavedModel servables (tensorflow-cpu), imported only when such a model is loaded.

Strategy:
- Signatures come from ``saved_model.pb`` itself, parsed with the vendored protos (the
  ``SignatureDef`` map of the MetaGraphDef whose tags match ``--saved_model_tags``), so names,
  dtypes, shapes and method names are exactly what TensorFlow Serving reports.
- Plaintext models load from their directory. If any file of the version is a protected file, every
  file is decrypted (or copied) in memory into TensorFlow's in-memory file system
  (``ram://teeserve-<uuid>/...``), loaded from there with ``tf.saved_model.load``, and the ram://
  copies are deleted right after: variables are restored into memory at load time, so no plaintext
  byte ever reaches the disk.
- Thread settings (intra/inter op) are process-wide in TensorFlow: they are applied once, at the
  first import, from the options of the first model loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..._proto import POOL, message_class
from .._config import ServingOptions
from .._secrets import FileReadError, ModelFiles
from .._types import Code, ServingError, Signature, TensorSpec
from ._base import LoadError, Servable

__all__ = ["SavedModelServable", "parse_signatures", "import_tensorflow", "op_error_text"]

_TF_LOCK = threading.Lock()
_TF: Any = None
_SKIP_SIGNATURES = {"__saved_model_init_op", "__saved_model_train_op"}
_FRAME_LINE = re.compile(r'^  File ".*", line \d+, in ')
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


def op_error_text(message: str) -> str:
    """The client's view of a TensorFlow run-time error: the op's own message, as TensorFlow Serving's
    C++ server sends it. Python TensorFlow wraps it in "Graph execution error:", a "Detected at node ...
    (most recent call last):" block of Python frames (file paths of the server) and an
    "[Op:__inference_...]" suffix; none of that may reach a client."""
    kept: list[str] = []
    in_frames = False
    for line in message.splitlines():
        if line.startswith("Graph execution error:"):
            continue
        if line.startswith("Detected at node") and line.rstrip().endswith("(most recent call last):"):
            in_frames = True
            continue
        if in_frames:
            # frames: '  File "...", line N, in f', the source line below it (4 spaces), blank lines
            if not line.strip() or _FRAME_LINE.match(line) or line.startswith("    "):
                continue
            in_frames = False
        kept.append(line)
    text = _OP_SUFFIX.sub("", "\n".join(kept)).strip()
    return text or "TensorFlow could not run the model"


#: A Keras home that already holds Keras's default ``keras.json`` (package data): Keras finds its config
#: there and, unlike with ``~/.keras``, has nothing to create.
KERAS_HOME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keras_home")


#: Optional imports of Keras 3 that write to the host when imported (see below).
_KERAS_OPTIONAL = ("matplotlib", "sklearn")


@contextlib.contextmanager
def _without_import_side_writes() -> Iterator[None]:
    """Keep ``import tensorflow`` from writing to the host's file system (none of it model data, but a
    TEE host should see no writes from the server at all; ``tests/serving/test_server_disk_writes.py``):

    - TensorFlow's bundled Keras and Keras 3 (which TensorFlow imports) each create ``~/.keras/keras.json``
      unless their ``KERAS_HOME`` already holds one: point it at ours, unless the user set it;
    - Keras 3 imports matplotlib (for its plotting helpers) and scikit-learn (for its scikit-learn
      wrappers) if it can: matplotlib writes a font cache under ``~/.cache``, and scikit-learn's joblib
      creates a named semaphore in ``/dev/shm``. The server uses neither, and Keras expects both may be
      missing: during the import they are unimportable (unless something in the process has already
      imported them); afterwards they are importable again;
    - absl's test module (imported by TensorFlow) asks ``tempfile`` for the temp directory, whose
      first use writes and removes a probe file in ``/tmp``: ``TEST_TMPDIR`` answers absl instead.
    """
    env = {"KERAS_HOME": KERAS_HOME, "TEST_TMPDIR": os.path.join(os.environ.get("TMPDIR") or "/tmp", "absl_testing")}
    env = {k: v for k, v in env.items() if k not in os.environ}  # a user's own setting wins
    os.environ.update(env)
    blocked = [name for name in _KERAS_OPTIONAL if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
    try:
        yield
    finally:  # both are read at import: the rest of the process (and its children) sees them as before
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        for k in env:
            os.environ.pop(k, None)


def import_tensorflow(options: ServingOptions) -> Any:
    """Import TensorFlow once, applying the thread settings before its runtime starts."""
    global _TF
    with _TF_LOCK:
        if _TF is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            with _without_import_side_writes():
                import tensorflow as tf

            try:
                tf.config.threading.set_intra_op_parallelism_threads(max(0, options.intra_op_threads))
                tf.config.threading.set_inter_op_parallelism_threads(max(0, options.inter_op_threads))
            except RuntimeError:  # the runtime was already initialized by someone else in-process
                pass
            _TF = tf
        return _TF


def _saved_model_class() -> Any:
    """``tensorflow.SavedModel`` (saved_model.proto) is not among the vendored files: declare its two
    fields (``saved_model_schema_version = 1``, ``repeated MetaGraphDef meta_graphs = 2``) once, under
    a private name, on top of the vendored ``MetaGraphDef``."""
    name = "teeserve.internal.SavedModel"
    try:
        return message_class(name)
    except KeyError:
        pass
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FileDescriptorProto(name="teeserve/internal/saved_model.proto",
                                           package="teeserve.internal", syntax="proto3",
                                           dependency=["tensorflow/core/protobuf/meta_graph.proto"])
    m = f.message_type.add(name="SavedModel")
    F = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="saved_model_schema_version", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    m.field.add(name="meta_graphs", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                type_name=".tensorflow.MetaGraphDef")
    with _TF_LOCK:
        try:
            POOL.FindMessageTypeByName(name)
        except KeyError:
            POOL.Add(f)
    return message_class(name)


def _tensor_spec(info: Any) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    return TensorSpec(info.name, int(info.dtype), shape)


def parse_signatures(saved_model_pb: bytes, tags: Sequence[str], source: str) -> dict[str, Signature]:
    """The SignatureDefs of the MetaGraphDef tagged exactly ``tags`` (TF Serving's choice)."""
    try:
        sm = _saved_model_class().FromString(saved_model_pb)
    except Exception as exc:  # protobuf DecodeError
        raise LoadError(Code.DATA_LOSS, f"{source}: not a SavedModel protobuf: {exc}", permanent=True) from exc
    want = set(tags)
    for mg in sm.meta_graphs:
        if set(mg.meta_info_def.tags) == want:
            return {
                key: Signature(
                    sd.method_name,
                    {a: _tensor_spec(t) for a, t in sorted(sd.inputs.items())},
                    {a: _tensor_spec(t) for a, t in sorted(sd.outputs.items())},
                )
                for key, sd in sorted(mg.signature_def.items())
                if key not in _SKIP_SIGNATURES
            }
    found = "; ".join("{ " + " ".join(mg.meta_info_def.tags) + " }" for mg in sm.meta_graphs)
    raise LoadError(Code.NOT_FOUND, f"{source}: Could not find meta graph def matching supplied tags: "
                                    f"{{ {' '.join(sorted(want))} }}. Available tags: {found}",
                    permanent=True)


def _read(files: ModelFiles, rel: str) -> bytes:
    try:
        return files.read(rel)
    except FileReadError as exc:
        raise LoadError(Code.DATA_LOSS if exc.permanent else Code.UNAVAILABLE, str(exc),
                        permanent=exc.permanent) from exc


class SavedModelServable(Servable):
    runtime = "TensorFlow"

    def __init__(self, loaded: Any, signatures: dict[str, Signature], tf: Any) -> None:
        self._loaded = loaded
        self._tf = tf
        self.signatures = {k: s for k, s in signatures.items() if k in loaded.signatures}
        self._functions = {k: loaded.signatures[k] for k in self.signatures}

    @classmethod
    def load(cls, files: ModelFiles, options: ServingOptions) -> SavedModelServable:
        pb_bytes = _read(files, "saved_model.pb")
        signatures = parse_signatures(pb_bytes, options.saved_model_tags, files.path("saved_model.pb"))
        tf = import_tensorflow(options)
        # Warmup records are replayed by the manager; they need not be in the ram:// copy.
        rels = [r for r in files.walk() if not r.startswith("assets.extra/")]
        protected = any(files.is_protected(r) for r in rels)
        if not protected and not files.require_encrypted:
            del pb_bytes
            return cls(cls._tf_load(tf, files.root, options, files.root), signatures, tf)
        root = f"ram://teeserve-{uuid.uuid4().hex}"
        try:
            for rel in rels:
                data = pb_bytes if rel == "saved_model.pb" else _read(files, rel)
                target = f"{root}/{rel}"
                tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
                with tf.io.gfile.GFile(target, "wb") as f:
                    f.write(data)
                del data
            del pb_bytes
            loaded = cls._tf_load(tf, root, options, files.root)
        finally:
            try:
                tf.io.gfile.rmtree(root)
            except Exception:  # noqa: BLE001 - nothing was written yet
                pass
        return cls(loaded, signatures, tf)

    @staticmethod
    def _tf_load(tf: Any, path: str, options: ServingOptions, shown: str) -> Any:
        try:
            return tf.saved_model.load(path, tags=list(options.saved_model_tags))
        except Exception as exc:  # tf.errors.OpError, ValueError, ...
            msg = getattr(exc, "message", None) or str(exc)
            raise LoadError(Code.INVALID_ARGUMENT, f"{shown}: TensorFlow could not load the SavedModel: "
                                                   f"{msg.splitlines()[0] if msg else type(exc).__name__}"
                            ) from exc

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray],
            output_aliases: Sequence[str]) -> dict[str, np.ndarray]:
        tf = self._tf
        fn = self._functions[signature_name]
        try:
            result = fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except tf.errors.OpError as exc:
            code = Code(exc.error_code) if exc.error_code in Code._value2member_map_ else Code.UNKNOWN
            raise ServingError(code, op_error_text(exc.message)) from exc
        except (TypeError, ValueError) as exc:  # argument binding (shape/dtype) in the function wrapper
            raise ServingError(Code.INVALID_ARGUMENT, str(exc).splitlines()[0]) from exc
        return {a: result[a].numpy() for a in output_aliases}

    def close(self) -> None:
        self._functions = {}
        self._loaded = None
