"""The exception tree of the model toolkit.

Every message names the file, tensor or signature at fault so the model owner can act on it::

    TeeserveError
     └── ModelError                  anything wrong with a model, an image or a conversion
          ├── ModelFormatError       an input is not what it claims (bad .pb, no SavedModel, bad image)
          ├── UnknownTensorError     a requested tensor is not in the graph (lists the candidates)
          ├── UnknownSignatureError  a requested signature is not in the SavedModel (lists them)
          ├── ConversionError        TensorFlow or tf2onnx could not convert the model
          └── VerificationError      the converted model computes something else than the source

Existing outputs are refused with :class:`teeserve._io.OutputExists` (shared by all writers).
"""

from __future__ import annotations

from .._errors import TeeserveError

__all__ = [
    "ConversionError",
    "ModelError",
    "ModelFormatError",
    "UnknownSignatureError",
    "UnknownTensorError",
    "VerificationError",
]


class ModelError(TeeserveError):
    """Root of the model toolkit's errors."""


class ModelFormatError(ModelError):
    """An input file is missing or is not a valid model (frozen GraphDef, SavedModel) or image."""


class UnknownTensorError(ModelError):
    """A tensor named on the command line does not exist in the graph."""

    def __init__(self, kind: str, name: str, available: list[str], origin: str = "graph") -> None:
        shown = ", ".join(available[:20])
        if len(available) > 20:
            shown += f", ... ({len(available)} in all)"
        shown = shown or "(none)"
        super().__init__(f"{origin}: {kind} tensor {name!r} is not in the graph; candidates: {shown}")
        self.name = name
        self.available = available


class UnknownSignatureError(ModelError):
    """The SavedModel has no signature of the requested name."""

    def __init__(self, path: str, name: str, available: list[str]) -> None:
        have = ", ".join(available) or "(none)"
        super().__init__(f"{path}: no signature {name!r}; the SavedModel has: {have}")
        self.name = name
        self.available = available


class ConversionError(ModelError):
    """TensorFlow or tf2onnx failed to convert the model."""


class VerificationError(ModelError):
    """The converted model's outputs differ from the source model's on the same input."""
