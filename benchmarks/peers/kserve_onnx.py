#!/usr/bin/env python
"""KServe 0.21's Python model server running an ONNX model with onnxruntime, for the peer benchmark.

A small ``kserve.Model`` subclass (as a KServe user writes a custom predictor) served by
``kserve.ModelServer``: the Open Inference Protocol v2 over gRPC
(``inference.GRPCInferenceService/ModelInfer``, raw tensor contents in and out) and the V1 REST protocol
(``POST /v1/models/NAME:predict`` with ``{"instances": ...}``, answered as TensorFlow Serving's row
format, ``{"predictions": [{"probabilities": [...], "classes": 7}]}``, so both servers produce the same
JSON). The session comes from ``_ort.open_session`` (same settings as teeserve).

``--workers N`` is KServe's own multi-process option (``ModelServer(workers=N)``): with N > 1 KServe
binds the REST port in the main process and serves it from N uvicorn processes (multiprocessing
*spawn*; the registered model is pickled into each, so the model class lives at module level and
re-opens its onnxruntime session when unpickled), while its gRPC server stays in the main process:
with ``--workers 2`` REST runs in 2 processes, gRPC in 1. Default 1 (KServe's default): one process
serves both.

KServe binds 0.0.0.0 / [::] with no option to change it; this launcher narrows both to 127.0.0.1
(the benchmark never listens beyond loopback). Runs inside bench-out/peers/kserve:

    kserve_onnx.py --model_name digits-onnx --model_path .../model.onnx --http_port 8080 --grpc_port 8081 \
        [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

HOST = "127.0.0.1"


def _bind_loopback_only() -> None:
    """KServe hard-codes ``host="0.0.0.0"`` (uvicorn) and ``[::]:PORT`` (gRPC)."""
    import uvicorn
    from grpc import aio
    from kserve.protocol.grpc import server as grpc_server

    config_init = uvicorn.Config.__init__

    def _config_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = HOST
        config_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = _config_init  # type: ignore[method-assign]

    def _aio_server(*args: Any, **kwargs: Any) -> Any:
        server = aio.server(*args, **kwargs)
        add = server.add_insecure_port
        server.add_insecure_port = lambda addr: add(addr.replace("[::]", HOST))  # type: ignore[method-assign]
        return server

    grpc_server.aio = types.SimpleNamespace(server=_aio_server)  # the module uses only aio.server


from kserve import InferOutput, InferRequest, InferResponse, Model  # noqa: E402


class OnnxModel(Model):
    """At module level (not inside a function) so that KServe's multi-process REST server
    (``--workers`` > 1, multiprocessing spawn) can pickle it into its worker processes."""

    def __init__(self, name: str, model_path: str) -> None:
        super().__init__(name)
        self.model_path = model_path
        self.session: Any = None
        self.load()

    def load(self) -> bool:
        from _ort import open_session

        self.session = open_session(self.model_path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    # An onnxruntime session cannot be pickled: a worker process opens its own, with the same settings
    # (the PEER_*_OP_THREADS environment is inherited).
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["session"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    # A plain (not async) predict: KServe calls it inline on its event loop, the cheapest path
    # for a model that runs in tens of microseconds.
    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):  # v2 (gRPC here)
            feed = {inp.name: inp.as_numpy() for inp in payload.inputs}
            values = self.session.run(self.output_names, feed)
            outputs = []
            for n, v in zip(self.output_names, values):
                out = InferOutput(n, list(v.shape), _v2_datatype(v.dtype))
                out.set_data_from_numpy(v, binary_data=payload.use_binary_outputs)
                outputs.append(out)
            return InferResponse(
                response_id=payload.id,
                model_name=self.name,
                infer_outputs=outputs,
                use_binary_outputs=payload.use_binary_outputs,
            )
        # V1 REST: {"instances": [...]} -> row format, one object per instance (TF Serving's shape)
        x = np.asarray(payload["instances"], dtype=np.float32)
        values = self.session.run(self.output_names, {self.input_name: x})
        rows = [{n: v[i].tolist() for n, v in zip(self.output_names, values)} for i in range(x.shape[0])]
        return {"predictions": rows}


def make_model(name: str, model_path: str) -> Any:
    return OnnxModel(name, model_path)


def _v2_datatype(dtype: np.dtype) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}[np.dtype(dtype).name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model_name", required=True)
    ap.add_argument("--model_path", required=True, help="the model.onnx file")
    ap.add_argument("--http_port", type=int, required=True)
    ap.add_argument("--grpc_port", type=int, required=True)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="KServe's ModelServer(workers=N): N > 1 serves REST from N processes; gRPC stays in one",
    )
    args = ap.parse_args()

    _bind_loopback_only()
    from kserve import ModelServer
    from kserve import model_server as ks_model_server

    # KServe's own logging configuration with every logger at WARNING. ModelServer applies
    # args.log_config_file in this process, and hands the same value to each REST worker it spawns
    # (--workers > 1), which configures its logging from it; a dict is accepted and pickles.
    ks_model_server.args.log_config_file = _quiet_log_config()

    model = make_model(args.model_name, args.model_path)
    # workers=1 (KServe's default): one process, gRPC and REST in it; workers=N: REST in N spawned
    # uvicorn processes, gRPC in this one. Per-request logging off, as for every server in the
    # comparison: KServe logs an access line, a trace line and a gRPC method line per request at INFO
    # by default; WARNING and up are kept.
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        enable_latency_logging=False,
    )
    _quiet_logs()
    server.start([model])


def _quiet_log_config() -> dict[str, Any]:
    import copy

    from kserve.logging import KSERVE_LOG_CONFIG

    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    for logger in config["loggers"].values():
        logger["level"] = "WARNING"
    return config


def _quiet_logs() -> None:
    import logging

    for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    main()
