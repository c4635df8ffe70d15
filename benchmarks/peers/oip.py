#!/usr/bin/env python
"""Open Inference Protocol v2 helpers for the peer benchmark, run inside bench-out/peers/kserve
(KServe ships the generated ``inference.GRPCInferenceService`` messages and stubs).

    oip.py make  --input x.npy --model NAME --out request.bin   serialize a ModelInferRequest whose
                 raw_input_contents are exactly the array's bytes (the bytes teeserve's PredictRequest
                 carries in tensor_content)
    oip.py check --target HOST:PORT --request request.bin        send it once and print the reply as
                 JSON ({"outputs": {name: [values...]}}), so bench_peers.py can check the answer
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
}


def make(args: argparse.Namespace) -> None:
    x = np.load(args.input)
    if x.dtype != np.float32:
        raise SystemExit(f"{args.input}: expected float32, got {x.dtype}")
    req = pb.ModelInferRequest(model_name=args.model)
    req.inputs.add(name=args.input_name, datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    with open(args.out, "wb") as fh:
        fh.write(req.SerializeToString())


def check(args: argparse.Namespace) -> None:
    import grpc

    with open(args.request, "rb") as fh:
        body = fh.read()
    with grpc.insecure_channel(args.target) as ch:
        call = ch.unary_unary(
            METHOD, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
        )
        resp = call(body, timeout=30)
    outputs = {}
    for i, out in enumerate(resp.outputs):
        dtype = _DTYPES[out.datatype]
        if resp.raw_output_contents:
            arr = np.frombuffer(resp.raw_output_contents[i], dtype=dtype)
        else:
            arr = np.asarray(getattr(out.contents, _CONTENTS[out.datatype]), dtype=dtype)
        outputs[out.name] = arr.reshape(list(out.shape)).tolist()
    print(json.dumps({"model_name": resp.model_name, "outputs": outputs}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--input", required=True)
    m.add_argument("--input-name", default="images")
    m.add_argument("--model", required=True)
    m.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--target", required=True)
    c.add_argument("--request", required=True)
    args = ap.parse_args()
    (make if args.cmd == "make" else check)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
