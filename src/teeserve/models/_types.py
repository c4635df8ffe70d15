"""What the demo-model makers return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoModel"]


@dataclass(frozen=True, slots=True)
class DemoModel:
    """The files of a demo model in TensorFlow Serving's layout, and how well it does.

    ``base_path`` is what a server's ``--model_base_path`` points at; ``saved_model_dir`` is version 1
    inside it. ``accuracy`` is measured on held-out data by running the exported SavedModel (not the
    training-time model), ``onnx_accuracy`` by running the ONNX file with ONNX Runtime.
    """

    name: str
    saved_model_dir: Path
    onnx_path: Path | None = None
    warmup_file: Path | None = None
    samples: tuple[Path, ...] = ()
    frozen_graph: Path | None = None
    accuracy: float | None = None
    onnx_accuracy: float | None = None
    onnx_max_abs_diff: float | None = None
    seconds: float = 0.0

    @property
    def base_path(self) -> Path:
        return self.saved_model_dir.parent

    @property
    def onnx_base_path(self) -> Path | None:
        return self.onnx_path.parent.parent if self.onnx_path is not None else None

    @property
    def version(self) -> int:
        return int(self.saved_model_dir.name)

    def written(self) -> list[Path]:
        """Every file or folder this model maker created, for printing."""
        paths = [self.saved_model_dir]
        paths += [p for p in (self.warmup_file, self.onnx_path, self.frozen_graph) if p is not None]
        return paths + list(self.samples)
