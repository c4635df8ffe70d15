"""The one onnxruntime session every peer server uses, made exactly as teeserve's ONNX backend makes it.

teeserve (``src/teeserve/serving/backends/_onnx.py``) reads ``model.onnx`` into memory and opens it
with ``SessionOptions(intra_op_num_threads=N, inter_op_num_threads=M)`` and ONNX Runtime's sequential
executor (its default; teeserve's parallel one only with ``--onnx-execution-mode=parallel``, which
bench_peers.py does not give) on the CPU provider; the peers do the same here with the same N and M, so the comparison is
between servers, not between session settings. Imported by the peer launchers inside their own venvs,
so only onnxruntime and the standard library are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def thread_settings() -> tuple[int, int]:
    """(intra, inter) op threads, passed by bench_peers.py through the environment."""
    return int(os.environ.get("PEER_INTRA_OP_THREADS", "1")), int(
        os.environ.get("PEER_INTER_OP_THREADS", "1")
    )


def open_session(model_path: str | os.PathLike[str]) -> Any:
    import onnxruntime as ort

    intra, inter = thread_settings()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(0, intra)
    so.inter_op_num_threads = max(0, inter)
    so.log_severity_level = 3
    return ort.InferenceSession(Path(model_path).read_bytes(), so, providers=["CPUExecutionProvider"])
