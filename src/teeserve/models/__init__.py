"""The model owner's model toolkit: demo models and conversion for the two serving backends.

Models are laid out as TensorFlow Serving expects them, ``<base>/<name>/<version>/``:

- ``make_digits`` trains a small CNN on scikit-learn's bundled digits and writes it as a SavedModel
  (``serving_default``: ``images`` float32 [-1, 8, 8] -> ``probabilities`` [-1, 10], ``classes``
  int64 [-1]; plus ``classify`` and ``regress`` signatures over tf.Example ``pixels``), a warmup
  file, the ONNX twin (same names) and sample PNGs. ``digits_image_to_input`` turns a picture into
  the ``images`` input.
- ``make_resnet50`` writes ResNet-50 v1.5 with random weights (``input`` [-1, 224, 224, 3] ->
  ``predict`` [-1, 1001]), the stand-in for the reference's ``resnet50-v15-fp32``.
- ``frozen_graph_to_saved_model`` is the reference's conversion step; ``saved_model_to_onnx`` makes the
  ONNX model for the fast backend. Both run the converted model against the source before writing.

Importing this package does not import TensorFlow (the client and an ONNX-only server use
``digits_image_to_input``); the functions that need it import it when called.
"""

from __future__ import annotations

from ._convert import frozen_graph_to_saved_model, saved_model_to_onnx
from ._digits import make_digits
from ._errors import (
    ConversionError,
    ModelError,
    ModelFormatError,
    UnknownSignatureError,
    UnknownTensorError,
    VerificationError,
)
from ._images import digits_image_to_input, digits_input_to_png
from ._resnet import build_resnet50, make_resnet50
from ._types import DemoModel

__all__ = [
    "ConversionError",
    "DemoModel",
    "ModelError",
    "ModelFormatError",
    "UnknownSignatureError",
    "UnknownTensorError",
    "VerificationError",
    "build_resnet50",
    "digits_image_to_input",
    "digits_input_to_png",
    "frozen_graph_to_saved_model",
    "make_digits",
    "make_resnet50",
    "saved_model_to_onnx",
]
