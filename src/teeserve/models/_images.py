"""Image <-> input tensor for the digits demo model (numpy and Pillow only; no TensorFlow).

Strategy: the model takes scikit-learn's 8x8 digits as they are, float pixel values 0..16 where 16 is
full ink. Pictures are the other way round (dark ink on light paper, 0..255), so a picture becomes an
input by: flatten transparency onto white, convert to grayscale, shrink to 8x8 with area averaging
(``BOX``: each input pixel is the mean of the block it covers) and map 255 (paper) -> 0, 0 (ink) -> 16.
The sample PNGs are written with the exact inverse (nearest-neighbour upscaling), so they round-trip.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ._errors import ModelFormatError

__all__ = ["digits_image_to_input", "digits_input_to_png", "DIGITS_SIZE", "DIGITS_MAX"]

DIGITS_SIZE = 8
DIGITS_MAX = 16.0


def digits_image_to_input(image: bytes | bytearray | memoryview | str | os.PathLike[str] | Any) -> np.ndarray:
    """Turn a picture of a digit (dark ink on a light background) into the model's ``images`` input.

    Args:
        image: encoded image bytes (PNG, JPEG, ...), a path to an image file, or a ``PIL.Image``.

    Returns:
        float32 array of shape ``[8, 8]`` with values in 0..16 (add a batch axis to send it).

    Raises:
        ModelFormatError: the file is missing or is not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    origin = "image data"
    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(image)))
        elif isinstance(image, (str, os.PathLike)):
            origin = os.fspath(image)
            img = Image.open(origin)
        else:
            raise TypeError(f"expected image bytes, a path or a PIL image, not {type(image).__name__}")
        img.load()
    except FileNotFoundError:
        raise ModelFormatError(f"{origin}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ModelFormatError(f"{origin}: not a readable image: {exc}") from exc

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    gray = img.convert("L").resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float32)
    return ((255.0 - pixels) * (DIGITS_MAX / 255.0)).astype(np.float32)


def digits_input_to_png(digit: np.ndarray, *, size: int = 64) -> bytes:
    """Render an 8x8 digit (0..16) as a ``size`` x ``size`` grayscale PNG, dark ink on white."""
    from PIL import Image

    arr = np.asarray(digit, dtype=np.float64)
    if arr.shape != (DIGITS_SIZE, DIGITS_SIZE):
        raise ValueError(f"a digit is {DIGITS_SIZE}x{DIGITS_SIZE}, not {arr.shape}")
    if size % DIGITS_SIZE:
        raise ValueError(f"size must be a multiple of {DIGITS_SIZE}, not {size}")
    gray = np.rint(255.0 - np.clip(arr, 0.0, DIGITS_MAX) * (255.0 / DIGITS_MAX)).astype(np.uint8)
    img = Image.fromarray(gray).resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
