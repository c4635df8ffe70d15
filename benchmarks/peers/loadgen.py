#!/usr/bin/env python
"""Closed-loop load generator for the peer benchmark: one tool for every server and protocol.

It sends one pre-built request over and over, ``--concurrency`` clients each with one request
outstanding at a time (closed loop), spread over ``--procs`` processes, for ``--warmup`` seconds that
are not counted and then ``--duration`` seconds that are, and prints one JSON object: requests/s,
p50/p99 latency, errors, and the CPU time the generator itself used in the measured window (to show
that it is not the bottleneck).

- ``--kind grpc``: the request file holds a serialized protobuf message that goes out as it is over a
  unary call to ``--method`` (``/tensorflow.serving.PredictionService/Predict`` for teeserve,
  ``/inference.GRPCInferenceService/ModelInfer`` for the Open Inference Protocol peers), so no
  server's protocol costs the generator more than another's; the status must be OK. Each client has
  its own channel (its own TCP connection, as the reference benchmark client).
- ``--tool cpp`` (gRPC only): the same loop in ``grpc_loadgen``, C++ on gRPC's own library
  (benchmarks/grpcload), which checks every status at less than half the CPU per call.
- ``--kind http``: the request file is a JSON body POSTed to ``--target`` (a URL) with aiohttp, one
  keep-alive connection per client; the status must be 200.

Runs in its own venv (bench-out/peers/loadgen: grpcio, aiohttp, uvloop), so only the standard library
and those are imported here. Usage (normally through benchmarks/bench_peers.py):

    loadgen.py --kind grpc --target 127.0.0.1:8500 --method /tensorflow.serving.PredictionService/Predict \
        --request predict.bin --concurrency 16 --procs 2 --duration 15 --warmup 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path
from typing import Any


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _run_clients(
    args: argparse.Namespace, nclients: int, t_measure: float, t_stop: float
) -> dict[str, Any]:
    """``nclients`` closed-loop clients in this process; wall-clock times (time.time) so that the
    windows of all processes line up."""
    body = Path(args.request).read_bytes()
    lat: list[float] = []
    errors: dict[str, int] = {}
    warm_errors = 0
    cpu_marks: dict[str, float] = {}

    async def cpu_marker() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.time()))
        cpu_marks["start"] = _cpu_seconds()
        await asyncio.sleep(max(0.0, t_stop - time.time()))
        cpu_marks["stop"] = _cpu_seconds()

    def record(t0: float, t1: float, err: str | None) -> None:
        nonlocal warm_errors
        if t1 < t_measure or t1 > t_stop:
            if err and t1 < t_measure:
                warm_errors += 1
            return
        if err:
            errors[err] = errors.get(err, 0) + 1
        else:
            lat.append(t1 - t0)

    if args.kind == "grpc":
        import grpc

        opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
        nch = nclients if args.grpc_channels <= 0 else min(nclients, args.grpc_channels)
        channels = [grpc.aio.insecure_channel(args.target, options=opts) for _ in range(nch)]
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 30) for ch in channels))
        calls = [ch.unary_unary(args.method) for ch in channels]

        async def client(i: int) -> None:
            call = calls[i % nch]
            now = time.time
            while True:
                t0 = now()
                if t0 >= t_stop:
                    return
                err = None
                try:
                    reply = await call(body, timeout=args.timeout)
                    if not reply:
                        err = "empty reply"
                except grpc.RpcError as exc:
                    code = exc.code() if hasattr(exc, "code") else None
                    err = getattr(code, "name", "RpcError")
                record(t0, now(), err)

        await asyncio.gather(cpu_marker(), *(client(i) for i in range(nclients)))
        for ch in channels:
            await ch.close()
    else:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=nclients, force_close=False, enable_cleanup_closed=False)
        headers = {"Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=args.timeout)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
        ) as session:

            async def client(i: int) -> None:
                now = time.time
                while True:
                    t0 = now()
                    if t0 >= t_stop:
                        return
                    err = None
                    try:
                        async with session.post(args.target, data=body, headers=headers) as resp:
                            payload = await resp.read()
                            if resp.status != 200:
                                err = f"HTTP {resp.status}"
                            elif not payload:
                                err = "empty reply"
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        err = type(exc).__name__
                    record(t0, now(), err)

            await asyncio.gather(cpu_marker(), *(client(i) for i in range(nclients)))

    return {
        "latencies": lat,
        "errors": errors,
        "warmup_errors": warm_errors,
        "cpu_s": cpu_marks.get("stop", _cpu_seconds()) - cpu_marks.get("start", 0.0),
    }


def _worker(args: argparse.Namespace, nclients: int, t_measure: float, t_stop: float, q: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # still correct, only slower
        pass
    try:
        q.put(asyncio.run(_run_clients(args, nclients, t_measure, t_stop)))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which must never hang)
        q.put({"fatal": f"{type(exc).__name__}: {exc}"})


def _percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def run_h2load(args: argparse.Namespace) -> dict[str, Any]:
    """The same measurement with nghttp2's h2load (C; Debian package nghttp2-client), a cross-check
    that costs the shared CPUs ~5x less per request than the Python clients. h2load sees HTTP status
    codes only: a gRPC error (grpc-status in the trailers, HTTP 200) is not counted as an error, so
    gRPC errors are reported as None; bench_peers.py checks the answers before and after the load."""
    import shutil
    import struct
    import subprocess
    import tempfile

    exe = shutil.which("h2load")
    if not exe:
        raise SystemExit("h2load not found (apt-get install nghttp2-client), or use --tool python")
    body = Path(args.request).read_bytes()
    threads = max(1, min(args.procs, args.concurrency))
    with tempfile.TemporaryDirectory(prefix="loadgen-h2load-") as tmp:
        data, logf = Path(tmp) / "body", Path(tmp) / "requests.log"
        argv = [
            exe,
            "-c",
            str(args.concurrency),
            "-m",
            "1",
            "-t",
            str(threads),
            "-D",
            f"{args.duration:g}",
            "--warm-up-time",
            f"{args.warmup:g}",
            f"--log-file={logf}",
            "-d",
            str(data),
        ]
        if args.kind == "grpc":
            data.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)  # gRPC length-prefixed message
            argv += [
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{args.target}{args.method}",
            ]
        else:
            data.write_bytes(body)
            argv += ["--h1", "-H", "content-type: application/json", args.target]
        # start so that the warm-up ends at t0 + startup + warmup, as the Python generator's does
        time.sleep(max(0.0, (args.t0 or time.time()) + args.startup - time.time()))
        t_start = time.time()
        out = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=args.warmup + args.duration + args.timeout + 30,
        )
        cpu = os.times()
        cpu_s = cpu.children_user + cpu.children_system
        if out.returncode != 0:
            raise SystemExit(f"h2load failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        lat: list[float] = []
        bad = 0
        for line in logf.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            if parts[1] == "200":
                lat.append(int(parts[2]) / 1e6)
            else:
                bad += 1
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out.stdout,
    )
    failed = int(m.group(5)) + int(m.group(6)) + int(m.group(7)) if m else 0
    lat.sort()
    wall = max(time.time() - t_start, 1e-9)
    errors = bad + failed
    return {
        "kind": args.kind,
        "target": args.target,
        "concurrency": args.concurrency,
        "procs": 1,
        "threads": threads,
        "tool": "h2load",
        "duration_s": args.duration,
        "requests": len(lat),
        "rps": len(lat) / args.duration,
        "p50_ms": 1e3 * _percentile(lat, 50),
        "p99_ms": 1e3 * _percentile(lat, 99),
        "mean_ms": 1e3 * sum(lat) / len(lat) if lat else math.nan,
        "errors": errors if args.kind == "http" else (errors or None),
        "errors_by_kind": {"non-200 or failed": errors} if errors else {},
        "warmup_errors": 0,
        # h2load is one process: its CPU over the whole run (warm-up included), in % of one core
        "loadgen_cpu_pct_per_proc": [100.0 * cpu_s / wall],
        "loadgen_cpu_us_per_req": 1e6 * cpu_s * (args.duration / wall) / len(lat) if lat else math.nan,
    }


def run_cpp(args: argparse.Namespace) -> dict[str, Any]:
    """gRPC through ``grpc_loadgen`` (C++, benchmarks/grpcload; built by the caller, given as
    ``--cpp-exe``): the same closed loop, one channel per client, every status checked, at less than
    half the Python clients' CPU per call. --procs is its number of completion-queue threads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: grpcload (stdlib only)
    import grpcload

    if not args.cpp_exe:
        raise SystemExit("--tool cpp needs --cpp-exe (benchmarks/grpcload builds it)")
    if args.grpc_channels > 0:
        raise SystemExit("--grpc-channels is not supported with --tool cpp (one channel per client)")
    try:
        return grpcload.run(Path(args.cpp_exe), target=args.target, method=args.method,
                            request=Path(args.request), concurrency=args.concurrency,
                            threads=max(1, min(args.procs, args.concurrency)), duration=args.duration,
                            warmup=args.warmup, startup=args.startup, t0=args.t0 or time.time(),
                            timeout=args.timeout)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.tool == "h2load":
        return run_h2load(args)
    if args.tool == "cpp" and args.kind == "grpc":
        return run_cpp(args)
    procs = max(1, min(args.procs, args.concurrency))
    share = [args.concurrency // procs + (1 if i < args.concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    # Channels are opened before the clock starts: give the processes a moment to start and connect.
    t_measure = (args.t0 or time.time()) + args.startup + args.warmup
    t_stop = t_measure + args.duration
    workers = [ctx.Process(target=_worker, args=(args, n, t_measure, t_stop, q), daemon=True) for n in share]
    for w in workers:
        w.start()
    results = []
    deadline = t_stop + args.timeout + 30
    try:
        for _ in workers:
            results.append(q.get(timeout=max(1.0, deadline - time.time())))
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise SystemExit("load generator worker failed: " + "; ".join(fatal))
    lat = sorted(x for r in results for x in r["latencies"])
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    cpu = [r["cpu_s"] for r in results]
    return {
        "kind": args.kind,
        "target": args.target,
        "concurrency": args.concurrency,
        "procs": procs,
        "tool": "python",
        "duration_s": args.duration,
        "requests": len(lat),
        "rps": len(lat) / args.duration,
        "p50_ms": 1e3 * _percentile(lat, 50),
        "p99_ms": 1e3 * _percentile(lat, 99),
        "mean_ms": 1e3 * sum(lat) / len(lat) if lat else math.nan,
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "warmup_errors": sum(r["warmup_errors"] for r in results),
        # CPU of the generator in the measured window, as a share of one core per process.
        "loadgen_cpu_pct_per_proc": [100.0 * c / args.duration for c in cpu],
        "loadgen_cpu_us_per_req": 1e6 * sum(cpu) / len(lat) if lat else math.nan,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("grpc", "http"), required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT for grpc, the URL for http")
    ap.add_argument("--method", help="gRPC method path, e.g. /inference.GRPCInferenceService/ModelInfer")
    ap.add_argument("--request", required=True, help="file with the serialized request (protobuf or JSON)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--startup", type=float, default=1.5, help="seconds for the processes to start and connect"
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument(
        "--t0",
        type=float,
        default=0.0,
        help="wall-clock start (time.time()) the windows count from, so that the caller can "
        "sample server CPU over the same window; default: now",
    )
    ap.add_argument(
        "--tool",
        choices=("python", "cpp", "h2load"),
        default="python",
        help="python: grpc.aio / aiohttp clients in --procs processes (default); cpp: gRPC through "
        "grpc_loadgen (--cpp-exe) with --procs threads, HTTP as python; h2load: nghttp2's h2load "
        "with --procs threads (cheaper, but blind to gRPC statuses)",
    )
    ap.add_argument("--cpp-exe", help="the grpc_loadgen binary for --tool cpp")
    ap.add_argument(
        "--grpc-channels",
        type=int,
        default=0,
        help="gRPC channels (TCP connections) per process; 0 = one per client (default)",
    )
    args = ap.parse_args(argv)
    if args.kind == "grpc" and not args.method:
        ap.error("--kind grpc needs --method")
    if args.concurrency < 1 or args.duration <= 0:
        ap.error("--concurrency must be >= 1 and --duration > 0")
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
