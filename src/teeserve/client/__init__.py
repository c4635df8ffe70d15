"""The remote requester: one-shot predictions and the benchmark client (gRPC or REST, TLS or mTLS)."""

from __future__ import annotations

from ._bench import BenchConfig, BenchResult, format_summary, plot, run_bench
from ._channel import ClientError, Stub, TlsOptions, aio_grpc_channel, grpc_channel, rest_ssl_context
from ._predict import PredictOutcome, Target, get_signature, load_inputs, predict, top_k

__all__ = [
    "BenchConfig", "BenchResult", "ClientError", "PredictOutcome", "Stub", "Target", "TlsOptions",
    "aio_grpc_channel", "format_summary", "get_signature", "grpc_channel", "load_inputs", "plot", "predict",
    "rest_ssl_context", "run_bench", "top_k",
]
