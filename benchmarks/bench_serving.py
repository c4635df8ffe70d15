#!/usr/bin/env python
"""Serving benchmark: ``teeserve serve`` over gRPC and REST, measured side by side in one run.

What it measures (issue 3 §7), each against a real ``python -m teeserve serve`` process on 127.0.0.1,
loaded by separate load-generator processes (one outstanding request per simulated client):

(a) the small digits model (ONNX), concurrency 16: requests/s, p50, p99, gRPC and REST, plaintext vs
    mutual TLS; prints the TLS cost ratio ``mTLS rps / plaintext rps`` (goal >= 0.8, PASS / NOT MET)
    and the ratios to the issue's reference figures for the peers (KServe 0.21 gRPC ~1,350 req/s, V1
    REST ~1,550 req/s, MLServer 1.7 ~500 req/s, measured on the issue's machine), marked only "above"
    or "below" the 1.5x goal: on a faster or slower machine they mislead. The peers themselves are run
    side by side, and the goal judged, by benchmarks/bench_peers.py (their own venvs), not here. The clients are spread over
    ``LOADGEN_PROCS`` load-generator processes or threads (raw pre-serialized requests: for gRPC the C++
    ``grpc_loadgen`` of benchmarks/grpcload by default, grpc.aio with ``--loadgen python``; raw
    keep-alive HTTP/1.1 for REST), so that the generator is not the bottleneck.
(b) ResNet-50 v1.5 (ONNX, random weights), batch 1, concurrency 2, gRPC + mutual TLS vs in-process
    onnxruntime with the same thread settings and 2 threads: ratio (goal >= 0.95), for each thread
    setting of ``--resnet-threads``, side by side: by default the reference deployment's flags
    (``--tensorflow_intra_op_parallelism=2 --tensorflow_inter_op_parallelism=2``) and one thread per
    model run (1/1, the faster in absolute terms on 2 cores).
(c) throughput and p99 against concurrency 1..32 for both models (mTLS), plotted to a PNG.

Rounds alternate between the configurations so that background load on the machine hits both
sides alike; the median round is reported.

Usage:  .venv/bin/python benchmarks/bench_serving.py [--out bench-out/serving] [--quick] [--no-resnet]
        [--loadgen cpp|python] [--rounds N] [--resnet-threads 2/2,1/1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PREDICT = "/tensorflow.serving.PredictionService/Predict"
KSERVE_GRPC_RPS = 1350.0  # measured on this kind of machine (issue 3 §7)
KSERVE_REST_RPS = 1550.0  # KServe's V1 REST server, same machine (issue 3 §7)
MLSERVER_GRPC_RPS = 500.0
GOAL_PEER_RATIO = 1.5
GOAL_TLS_RATIO = 0.8
GOAL_INPROC_RATIO = 0.95


def thread_settings(text: str) -> tuple[tuple[int, int], ...]:
    """``--resnet-threads``: ``INTRA/INTER`` pairs, comma-separated (e.g. ``2/2,1/1``)."""
    pairs = []
    for part in text.split(","):
        intra, sep, inter = part.strip().partition("/")
        try:
            pair = (int(intra), int(inter))
        except ValueError:
            pair = (-1, -1)
        if not sep or min(pair) < 0:
            raise argparse.ArgumentTypeError(f"expected INTRA/INTER thread counts (e.g. 2/2), got {part!r}")
        pairs.append(pair)
    return tuple(dict.fromkeys(pairs))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "NOT MET"


# --- load generator (runs in its own process) ----------------------------------------------------


async def _rest_calls(args: argparse.Namespace, data: bytes) -> list[Any]:
    """One keep-alive HTTP/1.1 connection per client (raw asyncio streams: the lightest client Python
    has, so the generator costs the shared cores as little as possible); returns one call per client."""
    import ssl

    host, port = args.target.rsplit(":", 1)
    ctx = None
    if args.ca:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.load_cert_chain(args.cert, args.key)
    head = (f"POST /v1/models/{args.model}:predict HTTP/1.1\r\nHost: {args.target}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    message = head + data

    async def connect() -> Any:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                       server_hostname="localhost" if ctx else None)

        async def call(_data: bytes, timeout: float) -> bytes:
            writer.write(message)
            headers = await reader.readuntil(b"\r\n\r\n")
            status = headers[9:12]
            length = 0
            for line in headers.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            if status != b"200":
                raise RuntimeError(f"HTTP {status.decode()}: {body[:200]!r}")
            return body

        return call

    return [await connect() for _ in range(args.concurrency)]


async def _loadgen(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    data = Path(args.request).read_bytes()
    if args.rest:
        calls = await _rest_calls(args, data)
        return await _drive(args, data, calls, (RuntimeError, OSError, asyncio.IncompleteReadError))
    # A local subchannel pool per channel: without it, gRPC gives every channel of a process with the same
    # target and arguments one shared TCP connection, and "--channels 4" would be a single connection (which
    # a server with --workers cannot spread: the kernel hands out connections, not calls).
    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    if args.ca:
        creds = grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), Path(args.key).read_bytes(),
                                             Path(args.cert).read_bytes())
        make = lambda: grpc.aio.secure_channel(  # noqa: E731
            args.target, creds, options=[("grpc.ssl_target_name_override", "localhost"), *opts])
    else:
        make = lambda: grpc.aio.insecure_channel(args.target, options=opts)  # noqa: E731
    channels = [make() for _ in range(max(1, min(args.concurrency, args.channels)))]
    calls = [ch.unary_unary(PREDICT) for ch in channels]
    try:
        return await _drive(args, data, calls, (grpc.RpcError,))
    finally:
        for ch in channels:
            await ch.close()


async def _drive(args: argparse.Namespace, data: bytes, calls: list[Any],
                 errors_of: tuple[type[BaseException], ...]) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    warm = 0
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + args.warmup
    stop_at = measure_from + args.duration

    async def client(i: int) -> None:
        nonlocal errors, warm
        call = calls[i % len(calls)]
        while True:
            t0 = loop.time()
            if t0 >= stop_at:
                return
            try:
                await call(data, timeout=60)
            except errors_of:
                errors += 1
                if args.rest:  # the connection is in an unknown state: stop this client
                    return
                continue
            t1 = loop.time()
            if t0 >= measure_from:
                latencies.append(t1 - t0)
            else:
                warm += 1

    await asyncio.gather(*(client(i) for i in range(args.concurrency)))
    return {"latencies": latencies, "warmup_requests": warm, "errors": errors}


def summarize(latencies: list[float], duration: float, errors: int) -> dict[str, Any]:
    latencies = sorted(latencies)
    n = len(latencies)
    return {
        "requests": n,
        "errors": errors,
        "rps": n / duration,
        "p50_ms": 1e3 * latencies[n // 2] if n else float("nan"),
        "p99_ms": 1e3 * latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
    }


#: Load-generator processes (the clients are spread over them): one Python process cannot drive more
#: than ~1,500 small gRPC calls/s, which would make the generator, not the server, the bottleneck.
#: (With ``--loadgen cpp``, the C++ generator's completion-queue threads.)
LOADGEN_PROCS = 2

#: ``--loadgen cpp`` (the default): the built ``grpc_loadgen`` that drives every gRPC point; None = the
#: Python generator below (``--loadgen python``). REST always uses the Python generator.
CPP_EXE: Path | None = None


def _run_cpp(server: Server, request: Path, concurrency: int, duration: float, warmup: float,
             tls: dict[str, str] | None, procs: int) -> dict[str, Any]:
    import grpcload

    assert CPP_EXE is not None
    cpu0 = server.cpu_seconds()
    r = grpcload.run(CPP_EXE, target=server.target, method=PREDICT, request=request, concurrency=concurrency,
                     threads=max(1, min(procs, concurrency)), duration=duration, warmup=warmup, startup=1.0,
                     timeout=60, tls=tls, server_name="localhost" if tls else None)
    result = {"requests": r["requests"], "errors": r["errors"] + r["warmup_errors"], "rps": r["rps"],
              "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "loadgen_cpu_us": r["loadgen_cpu_us_per_req"]}
    result["server_cpu_ms"] = 1e3 * (server.cpu_seconds() - cpu0) / max(r["requests"] + r["warmup_requests"], 1)
    return result


def run_loadgen(server: Server, request: Path, concurrency: int, duration: float, warmup: float,
                tls: dict[str, str] | None, *, rest: bool = False, procs: int = LOADGEN_PROCS) -> dict[str, Any]:
    """Load-generator processes against ``server``; adds the server's CPU time per request (whole run,
    warm-up included), a figure that background load on the machine disturbs less than requests/s."""
    if CPP_EXE is not None and not rest:
        return _run_cpp(server, request, concurrency, duration, warmup, tls, procs)
    target = server.rest_target if rest else server.target
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    cpu0 = server.cpu_seconds()
    running = []
    for share in shares:
        argv = [sys.executable, __file__, "_loadgen", "--target", target, "--request", str(request),
                "--concurrency", str(share), "--duration", str(duration), "--warmup", str(warmup),
                "--model", server.name]
        if rest:
            argv.append("--rest")
        if tls:
            argv += ["--ca", tls["ca"], "--key", tls["key"], "--cert", tls["cert"]]
        running.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    latencies: list[float] = []
    errors = warm = 0
    for proc in running:
        stdout, stderr = proc.communicate(timeout=duration + warmup + 120)
        if proc.returncode != 0:
            raise SystemExit(f"load generator failed:\n{stderr}")
        part = json.loads(stdout.strip().splitlines()[-1])
        latencies += part["latencies"]
        errors += part["errors"]
        warm += part["warmup_requests"]
    result = summarize(latencies, duration, errors)
    result["server_cpu_ms"] = 1e3 * (server.cpu_seconds() - cpu0) / max(result["requests"] + warm, 1)
    return result


# --- servers ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, base_path: Path, log_dir: Path, *extra: str, tls: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.rest_port = free_port()
        self.name = name
        self.tls = tls
        argv = [sys.executable, "-m", "teeserve", "serve", f"--model_name={name}", f"--model_base_path={base_path}",
                f"--port={self.port}", f"--rest_api_port={self.rest_port}", "--host", "127.0.0.1",
                "--file_system_poll_wait_seconds=0", "--log-level=warning", *extra]
        if tls:
            argv.append(f"--ssl_config_file={tls['ssl_cfg']}")
        self.log = open(log_dir / f"server-{name}-{'tls' if tls else 'plain'}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rest_target(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def _wait_ready(self, timeout: float = 300) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self.tls:
            creds = grpc.ssl_channel_credentials(*(Path(self.tls[k]).read_bytes() for k in ("ca", "key", "cert")))
            ch = grpc.secure_channel(self.target, creds, options=[("grpc.ssl_target_name_override", "localhost")])
        else:
            ch = grpc.insecure_channel(self.target)
        deadline = time.monotonic() + timeout
        with ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SystemExit(f"server exited ({self.proc.returncode}); see {self.log.name}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# --- models and requests ---------------------------------------------------------------------------


def digits_model(models: Path) -> tuple[Path, str]:
    """The demo digits model's ONNX twin (trained by teeserve.models.make_digits), made once."""
    base = models / "digits-onnx"
    if not (base / "1" / "model.onnx").exists():
        from teeserve.models import make_digits

        print("making the digits model (once) ...", flush=True)
        make_digits(models, name="digits", samples_out=models / "samples", force=True)
    return base, "digits"


def resnet_model(models: Path) -> tuple[Path, str]:
    base = models / "resnet50-v15-fp32-onnx"
    if not (base / "1" / "model.onnx").exists():
        from teeserve.models import make_resnet50

        print("making ResNet-50 (once; 1.5-3 minutes) ...", flush=True)
        make_resnet50(models, force=True, log=lambda m: print("  " + m, flush=True))
    return base, "resnet50-v15-fp32"


def predict_request(name: str, alias: str, array: np.ndarray) -> bytes:
    from teeserve._proto import pb
    from teeserve.serving._tensors import ndarray_to_tensor_proto

    req = pb.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = "serving_default"
    req.inputs[alias].CopyFrom(ndarray_to_tensor_proto(array))
    return req.SerializeToString()


def tls_material(out: Path) -> dict[str, str]:
    from teeserve import tlsmaterial

    d = out / "tls"
    if not (d / "ssl.cfg").exists():
        tlsmaterial.make_tls_material(d, server_cn="localhost", client_cn="bench-client", server_dns=["localhost"],
                                      server_ips=["127.0.0.1"], force=True)
    return {"ssl_cfg": str(d / "ssl.cfg"), "ca": str(d / "ca_cert.pem"), "key": str(d / "client" / "key.pem"),
            "cert": str(d / "client" / "cert.pem")}


def in_process_onnxruntime(model: Path, feed: dict[str, np.ndarray], threads: int, intra: int, inter: int,
                           duration: float, warmup: float) -> dict[str, Any]:
    """``threads`` Python threads calling one session, as the server's worker threads do."""
    import threading

    import onnxruntime as ort

    so = ort.SessionOptions()
    if intra:
        so.intra_op_num_threads = intra
    if inter:
        so.inter_op_num_threads = inter
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            sess.run(None, feed)
            if t0 >= measure_from:
                latencies.append(time.perf_counter() - t0)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return summarize(latencies, duration, 0)


# --- front-end choice: grpc.aio vs the thread-pool server ------------------------------------------


def echo_server_main(argv: list[str]) -> int:
    """A Predict handler with the same per-request work as teeserve's front end for a tiny model
    (parse, TensorProto -> ndarray, a 64x10 matmul, ndarray -> TensorProto, serialize), served by
    ``grpc.aio`` (inference handed to a thread pool, as teeserve's core does) or by gRPC's synchronous
    server (inference in the gRPC worker thread); ``aio-inline`` runs the handler on the event loop (as
    teeserve's core does for a small model), ``aio-inline-uvloop`` the same on uvloop. Used by
    ``--frontends`` to justify the choice."""
    import concurrent.futures as cf

    import grpc

    from teeserve._proto import pb
    from teeserve.serving._tensors import ndarray_to_tensor_proto, tensor_proto_to_ndarray

    kind, port = argv[0], int(argv[1])
    w = np.random.default_rng(0).random((64, 10), dtype=np.float32)
    pool = cf.ThreadPoolExecutor(4)

    def compute(req: Any) -> Any:
        x = tensor_proto_to_ndarray(req.inputs["images"], "images").reshape(-1, 64)
        resp = pb.PredictResponse()
        resp.model_spec.name = req.model_spec.name
        resp.outputs["probabilities"].CopyFrom(ndarray_to_tensor_proto(x @ w))
        return resp

    def handlers(fn: Any) -> Any:
        return grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": grpc.unary_unary_rpc_method_handler(fn, request_deserializer=pb.PredictRequest.FromString,
                                                           response_serializer=lambda m: m.SerializeToString())})

    if kind.startswith("aio"):
        inline = kind.startswith("aio-inline")

        async def predict(req: Any, ctx: Any) -> Any:
            if inline:
                return compute(req)
            return await asyncio.get_running_loop().run_in_executor(pool, compute, req)

        async def serve() -> None:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((handlers(predict),))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        if kind.endswith("uvloop"):
            import uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())
    else:
        server = grpc.server(cf.ThreadPoolExecutor(16))
        server.add_generic_rpc_handlers((handlers(lambda req, ctx: compute(req)),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
    return 0


class EchoServer(Server):
    def __init__(self, kind: str, log_dir: Path) -> None:  # noqa: D107 - same interface as Server
        import grpc

        self.port = free_port()
        self.name = "digits"
        self.tls = None
        self.log = open(log_dir / f"echo-{kind}-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "_echo", kind, str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with grpc.insecure_channel(self.target) as ch:
                    grpc.channel_ready_future(ch).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"echo server did not start; see {self.log.name}") from None


def compare_frontends(out: Path, request: Path, args: argparse.Namespace) -> None:
    kinds = {"sync": "sync grpc.server, inline inference", "aio": "grpc.aio + thread-pool inference",
             "aio-inline": "grpc.aio, inline inference", "aio-inline-uvloop": "grpc.aio on uvloop, inline"}
    servers = {kind: EchoServer(kind, out / "logs") for kind in kinds}
    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
    try:
        for _ in range(args.rounds):
            for kind, server in servers.items():
                rounds[kind].append(run_loadgen(server, request, args.concurrency, args.duration, args.warmup, None))
    finally:
        for server in servers.values():
            server.stop()
    sync = median_round(rounds["sync"])
    print(f"(front end) the same tiny Predict handler, concurrency {args.concurrency}, plaintext, one process")
    for kind, label in kinds.items():
        r = median_round(rounds[kind])
        print(row(label, r) + f"   /sync: req/s {r['rps'] / sync['rps']:.2f}, "
              f"CPU per request {r['server_cpu_ms'] / sync['server_cpu_ms']:.2f}")
    print(flush=True)


# --- the benchmark ---------------------------------------------------------------------------------


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


def row(label: str, r: dict[str, Any]) -> str:
    cpu = f"   server CPU {r['server_cpu_ms']:.2f} ms/req" if "server_cpu_ms" in r else ""
    if "loadgen_cpu_us" in r:
        cpu += f", generator {r['loadgen_cpu_us'] / 1e3:.2f}"
    return (f"  {label:<34} {r['rps']:>8.1f} req/s   p50 {r['p50_ms']:>7.2f} ms   p99 {r['p99_ms']:>7.2f} ms"
            f"{cpu}   ({r['requests']} req, {r['errors']} errors)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench-out" / "serving"), help="models, TLS material, logs, plot")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per point (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds for (a) and (b); median reported")
    p.add_argument("--concurrency", type=int, default=16, help="clients for (a) (default 16)")
    p.add_argument("--resnet-threads", type=thread_settings, default=((2, 2), (1, 1)), metavar="INTRA/INTER,...",
                   help="(b)'s thread settings, each measured side by side: --tensorflow_intra_op_parallelism / "
                        "--tensorflow_inter_op_parallelism for the server and the same for onnxruntime in-process "
                        "(default 2/2,1/1: the reference deployment's flags, and one thread per model run; (c) "
                        "uses the first)")
    p.add_argument("--no-resnet", action="store_true", help="skip (b) and ResNet-50 in (c)")
    p.add_argument("--quick", action="store_true", help="short points, one round (a smoke run)")
    p.add_argument("--loadgen", choices=("cpp", "python"), default="cpp",
                   help="gRPC load generator: cpp (default) = benchmarks/grpcload's grpc_loadgen, C++ on gRPC's "
                        "own library, built on first use (apt-get install libgrpc++-dev pkg-config), less than "
                        "half the CPU per call of python = grpc.aio clients in 2 processes; REST always python")
    p.add_argument("--frontends", action="store_true",
                   help="also compare gRPC's thread-pool server with grpc.aio (inference in a pool, inline, "
                        "inline on uvloop) on the same tiny handler")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    if args.loadgen == "cpp":
        import grpcload

        global CPP_EXE
        try:
            CPP_EXE = grpcload.ensure_built(ROOT / "bench-out" / "bin")
        except grpcload.BuildError as exc:
            raise SystemExit(f"bench_serving: --loadgen cpp: {exc} (or use --loadgen python)") from None
    models = out / "models"
    tls = tls_material(out)
    gen = ("gRPC: grpc_loadgen (C++), 2 threads; REST: Python, 2 processes" if CPP_EXE
           else "Python (grpc.aio, raw HTTP/1.1), 2 processes")
    print(f"teeserve serving benchmark: {os.cpu_count()} CPUs, load generator {gen}, separate from the server, on loopback;"
          f" {args.duration:g}s points after {args.warmup:g}s warm-up, median of {args.rounds} round(s)\n", flush=True)
    results: dict[str, Any] = {}

    # (a) digits, plaintext vs mTLS
    base, name = digits_model(models)
    rng = np.random.default_rng(0)
    digits_req = out / "digits.request.bin"
    digits_x = rng.random((1, 8, 8), dtype=np.float32)
    digits_req.write_bytes(predict_request(name, "images", digits_x))
    digits_rest = out / "digits.request.json"
    digits_rest.write_text(json.dumps({"signature_name": "serving_default", "inputs": {"images": digits_x.tolist()}}))
    if args.frontends:
        compare_frontends(out, digits_req, args)
    # One intra-op thread: for a model this small, onnxruntime's extra pool threads only spin (they cost a
    # whole core here while the load generator needs it); TF Serving users set the same flags.
    small = ["--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"]
    plain = Server(name, base, out / "logs", *small)
    secure = Server(name, base, out / "logs", *small, tls=tls)
    rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "mtls": [], "rest": [], "rest_mtls": []}
    try:
        kinds = {"plain": (plain, digits_req, None, False), "mtls": (secure, digits_req, tls, False),
                 "rest": (plain, digits_rest, None, True), "rest_mtls": (secure, digits_rest, tls, True)}
        for r in range(args.rounds):
            # alternating order (ABBA...): a drift in the machine's speed during a round then favours
            # neither side of a ratio
            for kind in (list(kinds) if r % 2 == 0 else list(reversed(kinds))):
                srv, req, cred, rest = kinds[kind]
                rounds[kind].append(run_loadgen(srv, req, args.concurrency, args.duration, args.warmup, cred,
                                                rest=rest))
        sweep_digits = []
        for c in (1, 2, 4, 8, 16, 32):
            sweep_digits.append((c, run_loadgen(secure, digits_req, c, max(args.duration / 2, 2),
                                                args.warmup / 2, tls)))
    finally:
        plain.stop()
        secure.stop()
    a_plain, a_mtls = median_round(rounds["plain"]), median_round(rounds["mtls"])
    a_rest, a_rest_mtls = median_round(rounds["rest"]), median_round(rounds["rest_mtls"])
    results["digits"] = {"plaintext": a_plain, "mtls": a_mtls, "rest_plaintext": a_rest,
                         "rest_mtls": a_rest_mtls, "sweep_mtls": sweep_digits}
    print(f"(a) digits (ONNX), concurrency {args.concurrency}, load generator: "
          + (f"gRPC grpc_loadgen (C++) with {LOADGEN_PROCS} threads, REST {LOADGEN_PROCS} Python processes" if CPP_EXE
             else f"{LOADGEN_PROCS} Python processes"))
    print(row("teeserve gRPC plaintext", a_plain))
    print(row("teeserve gRPC mutual TLS", a_mtls))
    print(row("teeserve REST plaintext", a_rest))
    print(row("teeserve REST mutual TLS", a_rest_mtls))
    tls_ratio = a_mtls["rps"] / a_plain["rps"]
    grpc_ratio = a_plain["rps"] / KSERVE_GRPC_RPS
    rest_ratio = a_rest["rps"] / KSERVE_REST_RPS
    # The peers are not run here: these two lines compare with the reference figures, measured
    # on the issue's machine. On a faster or slower machine they mislead, so they say "above/below
    # the reference", never PASS; bench_peers.py runs the peers side by side and judges the goal.
    def against_reference(ratio: float) -> str:
        return f"{'above' if ratio >= GOAL_PEER_RATIO else 'below'} the reference (bench_peers.py judges the goal)"

    print(f"  gRPC vs the issue's KServe 0.21 gRPC reference (~{KSERVE_GRPC_RPS:.0f} req/s, another machine's): "
          f"{a_plain['rps']:.0f}/{KSERVE_GRPC_RPS:.0f} = {grpc_ratio:.2f}x   goal >= {GOAL_PEER_RATIO}x: "
          f"{against_reference(grpc_ratio)}")
    print(f"  REST vs the issue's KServe 0.21 V1 REST reference (~{KSERVE_REST_RPS:.0f} req/s): "
          f"{a_rest['rps']:.0f}/{KSERVE_REST_RPS:.0f} = {rest_ratio:.2f}x   goal >= {GOAL_PEER_RATIO}x: "
          f"{against_reference(rest_ratio)}")
    print(f"  gRPC TLS cost mTLS/plaintext: {tls_ratio:.2f}   goal >= {GOAL_TLS_RATIO}: "
          f"{verdict(tls_ratio >= GOAL_TLS_RATIO)}   (REST: {a_rest_mtls['rps'] / a_rest['rps']:.2f})")
    print(f"  vs the issue's MLServer 1.7 gRPC reference (~{MLSERVER_GRPC_RPS:.0f} req/s): plaintext "
          f"{a_plain['rps'] / MLSERVER_GRPC_RPS:.2f}x")
    print("  p99 against the peers' p99: run benchmarks/bench_peers.py (same load generator settings)", flush=True)

    # (b) ResNet-50, mTLS server vs in-process onnxruntime, concurrency 2, for each thread setting
    sweep_resnet: list[tuple[int, dict[str, Any]]] = []
    if not args.no_resnet:
        rbase, rname = resnet_model(models)
        image = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3)).astype(np.float32)
        resnet_req = out / "resnet.request.bin"
        resnet_req.write_bytes(predict_request(rname, "input", image))
        settings = args.resnet_threads
        rservers = {t: Server(rname, rbase, out / "logs", f"--tensorflow_intra_op_parallelism={t[0]}",
                              f"--tensorflow_inter_op_parallelism={t[1]}", tls=tls) for t in settings}
        rr: dict[tuple[tuple[int, int], str], list[dict[str, Any]]] = {
            (t, kind): [] for t in settings for kind in ("server", "inproc")}
        try:
            for r in range(args.rounds):
                order = [(t, kind) for t in settings for kind in ("server", "inproc")]
                for t, kind in (order if r % 2 == 0 else order[::-1]):
                    rr[(t, kind)].append(
                        run_loadgen(rservers[t], resnet_req, 2, args.duration, args.warmup, tls) if kind == "server"
                        else in_process_onnxruntime(rbase / "1" / "model.onnx", {"input": image}, 2,
                                                    t[0], t[1], args.duration, args.warmup))
            for c in (1, 2, 4, 8, 16, 32):
                sweep_resnet.append((c, run_loadgen(rservers[settings[0]], resnet_req, c, args.duration,
                                                    args.warmup / 2, tls)))
        finally:
            for rserver in rservers.values():
                rserver.stop()
        results["resnet50"] = {"sweep_mtls": sweep_resnet, "sweep_threads": list(settings[0]), "by_threads": {}}
        print("\n(b) ResNet-50 v1.5 (ONNX), batch 1, concurrency 2, server (gRPC mutual TLS) / in-process "
              "onnxruntime (2 threads) with the same thread settings")
        for t in settings:
            b_srv, b_in = median_round(rr[(t, "server")]), median_round(rr[(t, "inproc")])
            ratio = b_srv["rps"] / b_in["rps"]
            per_round = [a["rps"] / b["rps"] for a, b in zip(rr[(t, "server")], rr[(t, "inproc")])]
            name = f"intra-op {t[0]}, inter-op {t[1]}" + (" (the reference deployment's)" if t == (2, 2) else "")
            results["resnet50"]["by_threads"][f"{t[0]}/{t[1]}"] = {
                "server_mtls": b_srv, "in_process": b_in, "ratio": ratio, "ratio_per_round": per_round}
            print(f"  threads: {name}")
            print(row("  teeserve gRPC mutual TLS", b_srv))
            print(row("  in-process onnxruntime, 2 threads", b_in))
            print(f"    ratio server/in-process: {ratio:.2f}   goal >= {GOAL_INPROC_RATIO}: "
                  f"{verdict(ratio >= GOAL_INPROC_RATIO)}   (per round, side by side: "
                  f"{', '.join(f'{q:.2f}' for q in per_round)})", flush=True)

    # (c) concurrency sweep
    print("\n(c) concurrency sweep (gRPC, mutual TLS)")
    for label, sweep in (("digits", sweep_digits), ("resnet50", sweep_resnet)):
        for c, r in sweep:
            print(row(f"{label} c={c}", r))
    png = out / "serving_concurrency.png"
    plot(sweep_digits, sweep_resnet, png)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nplot: {png}\nraw numbers: {out / 'results.json'}")
    return 0


def plot(digits: list[tuple[int, dict[str, Any]]], resnet: list[tuple[int, dict[str, Any]]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, sweep, style in (("digits (ONNX)", digits, "o-"), ("ResNet-50 (ONNX)", resnet, "s-")):
        if not sweep:
            continue
        cs = [c for c, _ in sweep]
        axes[0].plot(cs, [r["rps"] for _, r in sweep], style, label=label)
        axes[1].plot(cs, [r["p99_ms"] for _, r in sweep], style, label=label)
    for ax, title, ylabel in ((axes[0], "throughput", "requests/s"), (axes[1], "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(f"teeserve gRPC + mutual TLS: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"teeserve serve on {os.cpu_count()} CPUs, load generator on the same machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def loadgen_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--request", required=True)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--ca")
    p.add_argument("--key")
    p.add_argument("--cert")
    p.add_argument("--model", default="digits")
    p.add_argument("--rest", action="store_true", help="REST predict (the request file is the JSON body)")
    print(json.dumps(asyncio.run(_loadgen(p.parse_args(argv)))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        sys.exit(loadgen_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_echo":
        sys.exit(echo_server_main(sys.argv[2:]))
    sys.exit(main())
