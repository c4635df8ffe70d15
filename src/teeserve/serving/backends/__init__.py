"""Servable backends: ONNX Runtime and TensorFlow SavedModel, picked by what a version dir holds.

``load_servable(files, options)`` looks at the version directory: ``saved_model.pb`` → TensorFlow
SavedModel (TensorFlow is imported only then), ``model.onnx`` → ONNX Runtime. Protected files are
decrypted in memory through :class:`teeserve.serving._secrets.ModelFiles`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._types import Code
from ._base import LoadError, Servable

if TYPE_CHECKING:
    from .._config import ServingOptions
    from .._secrets import ModelFiles

__all__ = ["LoadError", "Servable", "load_servable", "detect_format"]

SAVED_MODEL_FILE = "saved_model.pb"
ONNX_FILE = "model.onnx"


def detect_format(files: ModelFiles) -> str:
    """``"tensorflow"`` or ``"onnx"``; LoadError NOT_FOUND if the directory holds neither."""
    if files.exists(SAVED_MODEL_FILE):
        return "tensorflow"
    if files.exists(ONNX_FILE):
        return "onnx"
    raise LoadError(Code.NOT_FOUND, f"Could not find SavedModel .pb or ONNX model.onnx at supplied "
                                    f"export directory path: {files.root}")


def load_servable(files: ModelFiles, options: ServingOptions) -> Servable:
    """Load the model in ``files.root`` (blocking; run it in a worker thread)."""
    fmt = detect_format(files)
    if fmt == "onnx":
        from ._onnx import OnnxServable

        return OnnxServable.load(files, options)
    from ._tf import SavedModelServable

    return SavedModelServable.load(files, options)
