#!/usr/bin/env python
"""Import footprint of ``teeserve serve``: an ONNX-only server against a SavedModel server.

Starts ``python -m teeserve serve`` on the digits model twice per round, once as ONNX and once as a
TensorFlow SavedModel (the same model, made by ``teeserve.models.make_digits``), on 127.0.0.1, and
reports for each: seconds from the start of the process to gRPC health SERVING, resident memory
(VmRSS) once serving, and whether TensorFlow's or onnxruntime's libraries are mapped into the process.
Rounds alternate the two servers; the ratios are of medians.

Usage:  .venv/bin/python benchmarks/bench_footprint.py [--rounds 3] [--out bench-out/serving]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import Server, digits_model  # noqa: E402  (the serving benchmark's server and model files)


def start_to_ready(base: Path, name: str, log_dir: Path) -> dict[str, float | bool]:
    """bench_serving's server (``python -m teeserve serve`` on 127.0.0.1, returned once gRPC health is
    SERVING): seconds from its start to that, then what the process holds while serving."""
    t0 = time.monotonic()
    server = Server(name, base, log_dir)
    try:
        ready_s = time.monotonic() - t0
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        return {"ready_s": ready_s, "rss_mb": int(status.split("VmRSS:")[1].split()[0]) / 1024,
                "tensorflow": "_pywrap_tensorflow" in maps or "libtensorflow" in maps,
                "onnxruntime": "onnxruntime" in maps}
    finally:
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3); medians reported")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "serving"), help="where the models are made/kept")
    args = p.parse_args()
    onnx_base, name = digits_model(Path(args.out) / "models")
    log_dir = Path(args.out) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    saved_base = onnx_base.parent / name  # make_digits writes the SavedModel beside the ONNX twin
    runs: dict[str, list[dict[str, float | bool]]] = {"ONNX": [], "SavedModel": []}
    for i in range(args.rounds):
        for kind, base in (("ONNX", onnx_base), ("SavedModel", saved_base)):
            r = start_to_ready(base, name, log_dir)
            runs[kind].append(r)
            print(f"round {i + 1}: {kind:10} ready in {r['ready_s']:5.2f} s, RSS {r['rss_mb']:5.0f} MB, "
                  f"tensorflow mapped: {r['tensorflow']}, onnxruntime mapped: {r['onnxruntime']}", flush=True)
    med = {k: {m: statistics.median(float(r[m]) for r in v) for m in ("ready_s", "rss_mb")} for k, v in runs.items()}
    print(f"\nmedian of {args.rounds}: ONNX-only server {med['ONNX']['ready_s']:.2f} s to ready, "
          f"{med['ONNX']['rss_mb']:.0f} MB; SavedModel server {med['SavedModel']['ready_s']:.2f} s, "
          f"{med['SavedModel']['rss_mb']:.0f} MB")
    print(f"ONNX / SavedModel: start {med['ONNX']['ready_s'] / med['SavedModel']['ready_s']:.2f}, "
          f"memory {med['ONNX']['rss_mb'] / med['SavedModel']['rss_mb']:.2f}")
    if any(r["tensorflow"] for r in runs["ONNX"]):
        print("ONNX-only server mapped TensorFlow: the import footprint goal is NOT MET")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
