"""The benchmark client: ``teeserve client bench``, a drop-in for the reference ``resnet_client_grpc.py``.

Same flags (``-url -ca -crt -key -batch -cnum -loop -img``), same per-request lines and the same
``summary:`` line, so existing scripts keep working; plus latency percentiles, error counts by status,
``--duration``, ``--rest``, ``--warmup``, ``--json``, ``--plot`` and ``--procs``.

Model of load, as the reference: ``cnum`` concurrent tasks, each with its *own* connection, each sending
its request ``loop`` times back to back (closed loop). ``--procs`` spreads the tasks over processes so
that the Python client is not the bottleneck when measuring a fast server.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._errors import TeeserveError
from ._channel import TlsOptions

__all__ = ["BenchConfig", "BenchResult", "run_bench", "format_summary"]


@dataclass(frozen=True)
class BenchConfig:
    url: str = "localhost:8500"
    tls: TlsOptions = field(default_factory=TlsOptions)
    model: str = "resnet50-v15-fp32"
    signature: str = "serving_default"
    input_name: str = "input"
    shape: tuple[int, ...] = (224, 224, 3)
    dtype: str = "float32"
    batch: int = 1
    cnum: int = 16
    loop: int = 200           # requests per connection; 0 = until interrupted (or --duration)
    duration: float | None = None
    warmup: int = 5
    img: str | None = None
    rest: bool = False
    procs: int = 1
    retries: int = 0          # retries per request on UNAVAILABLE (e.g. a replica restarting)
    timeout: float = 60.0
    verbose: bool | None = None   # per-request lines; default: on unless stdout is a terminal
    progress: bool | None = None  # live progress line; default: on a terminal


@dataclass
class BenchResult:
    cnum: int
    batch: int
    e2e_s: float
    requests: int
    errors: dict[str, int]
    latencies_ms: list[float]
    finish_times_s: list[float]
    first_response: dict[str, Any] | None = None
    #: The first failed request's status and the server's (or the transport's) reason, e.g.
    #: ``NOT_FOUND: Servable not found for request: Latest(missing)``: the counts alone do not say why.
    first_error: str | None = None

    @property
    def tps(self) -> float:
        return self.requests * self.batch / self.e2e_s if self.e2e_s > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {}
        a = np.asarray(self.latencies_ms)
        return {"avg": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                "p99": float(np.percentile(a, 99)), "max": float(a.max())}

    def to_json(self) -> dict[str, Any]:
        return {"cnum": self.cnum, "batch": self.batch, "e2e_time_s": self.e2e_s, "requests": self.requests,
                "tps": self.tps, "latency_ms": self.percentiles(), "errors": self.errors,
                "first_error": self.first_error}


def format_summary(r: BenchResult) -> str:
    """The reference client's summary line, byte for byte in form."""
    avg = r.percentiles().get("avg", float("nan"))
    return (f"summary: cnum {r.cnum}, batch {r.batch}, e2e time(s) {r.e2e_s}, "
            f"average latency(ms) {avg}, tps: {r.tps}")


def _make_input(cfg: BenchConfig) -> np.ndarray:
    if cfg.img:
        from PIL import Image

        h, w = cfg.shape[0], cfg.shape[1]
        img = Image.open(cfg.img).convert("RGB").resize((w, h))
        return np.asarray(img, dtype=np.float32)[None, ...]
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    # As the reference: random uint8 pixels, sent as float32.
    return rng.integers(0, 256, size=(cfg.batch, *cfg.shape), dtype=np.uint8).astype(cfg.dtype)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled, self.done, self.errors, self._last = enabled, 0, 0, 0.0
        self._start = time.perf_counter()

    def tick(self, ok: bool) -> None:
        self.done += 1
        self.errors += not ok
        now = time.perf_counter()
        if self.enabled and now - self._last > 0.25:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            sys.stderr.write(f"\r  {self.done} requests, {self.errors} errors, {rate:.1f} req/s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class _Window:
    """The measured window: it opens when every task of this process has finished its warm-up
    (connection set-up and warm-up requests are not measured, as in the reference client)."""

    def __init__(self, tasks: int, duration: float | None) -> None:
        self.barrier = asyncio.Barrier(tasks)
        self.duration = duration
        self.start: float | None = None
        self.start_wall = 0.0

    async def open(self) -> float | None:
        """Wait for the other tasks; returns the deadline (perf_counter) or None."""
        await self.barrier.wait()
        if self.start is None:
            self.start, self.start_wall = time.perf_counter(), time.time()
        return None if self.duration is None else self.start + self.duration


class _Recorder:
    """What every request leaves behind, for both protocols: latency, finish time, errors by status,
    the first response, the progress line and the reference client's per-request line."""

    def __init__(self, cfg: BenchConfig, window: _Window, progress: _Progress, verbose: bool) -> None:
        self.cfg, self.window, self.progress, self.verbose = cfg, window, progress, verbose
        self.channel = "secure" if cfg.tls.enabled else "insecure"
        self.lat: list[float] = []
        self.fin: list[float] = []
        self.errors: Counter[str] = Counter()
        self.first: dict[str, Any] | None = None
        self.first_error: str | None = None

    def record(self, task: int, loop_idx: int, status: str, start: float, end: float,
               first: Callable[[], dict[str, Any]], detail: str = "") -> None:
        ms = (end - start) * 1000
        if status == "OK":
            self.lat.append(ms)
            self.fin.append(end - (self.window.start or start))
            if self.first is None:
                self.first = first()
        else:
            self.errors[status] += 1
            if self.first_error is None:
                self.first_error = f"{status}: {detail}" if detail else status
        self.progress.tick(status == "OK")
        if self.verbose:
            # The reference client's line; a failed request says so at its end.
            failed = "" if status == "OK" else f", error {status}"
            print(f"query: {self.channel} channel, task {task}, batch {self.cfg.batch}, loop_idx {loop_idx}, "
                  f"latency(ms) {ms:.1f}, tps: {self.cfg.batch / (ms / 1000):.1f}{failed}", flush=False)


async def _worker_async(cfg: BenchConfig, task_ids: list[int], out: dict[str, Any]) -> None:
    import grpc

    from .._proto import pb
    from ..serving._tensors import ndarray_to_tensor_proto
    from ._channel import Stub, aio_grpc_channel

    verbose = cfg.verbose if cfg.verbose is not None else not sys.stdout.isatty()
    progress = _Progress(cfg.progress if cfg.progress is not None else sys.stderr.isatty())
    window = _Window(len(task_ids), cfg.duration)
    rec = _Recorder(cfg, window, progress, verbose)

    async def one_task(i: int) -> None:
        data = _make_input(cfg)
        if cfg.rest:
            await _rest_task(cfg, i, data, rec, window)
            return
        req = pb.PredictRequest()
        req.model_spec.name = cfg.model
        req.model_spec.signature_name = cfg.signature
        req.inputs[cfg.input_name].CopyFrom(ndarray_to_tensor_proto(data))
        async with aio_grpc_channel(cfg.url, cfg.tls) as channel:
            stub = Stub(channel)
            for _ in range(cfg.warmup):
                try:
                    await stub.Predict(req, timeout=cfg.timeout)
                except grpc.RpcError:
                    pass
            deadline = await window.open()
            j = 0
            while (cfg.loop == 0 or j < cfg.loop) and (deadline is None or time.perf_counter() < deadline):
                start = time.perf_counter()
                status, resp, detail = "OK", None, ""
                for attempt in range(cfg.retries + 1):
                    try:
                        resp = await stub.Predict(req, timeout=cfg.timeout)
                        status = "OK"
                        break
                    except grpc.RpcError as exc:
                        status, detail = exc.code().name, str(exc.details() or "")[:300]
                        if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == cfg.retries:
                            break
                        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

                def first(resp: Any = resp) -> dict[str, Any]:
                    from google.protobuf import json_format

                    return json_format.MessageToDict(resp)

                rec.record(i, j, status, start, time.perf_counter(), first, detail)
                j += 1

    try:
        await asyncio.gather(*(one_task(i) for i in task_ids))
    finally:
        # Also when Ctrl-C cancels the run (``-loop 0`` runs until then): what was measured until the
        # interrupt is the result, the window closing at the interrupt.
        progress.close()
        out.update(lat=rec.lat, fin=rec.fin, errors=dict(rec.errors), first=rec.first, first_error=rec.first_error,
                   start_wall=window.start_wall, end_wall=time.time(), fin_offset=window.start_wall)


async def _rest_task(cfg: BenchConfig, i: int, data: np.ndarray, rec: _Recorder, window: _Window) -> None:
    import httpx

    from ._channel import rest_ssl_context

    scheme = "https" if cfg.tls.enabled else "http"
    host = cfg.tls.server_name or cfg.url.rpartition(":")[0]
    url = f"{scheme}://{cfg.url}/v1/models/{cfg.model}:predict"
    body = json.dumps({"signature_name": cfg.signature, "inputs": {cfg.input_name: data.tolist()}}).encode()
    ctx = rest_ssl_context(cfg.tls)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(verify=ctx if ctx is not None else False, limits=limits, timeout=cfg.timeout) as client:
        ext = {"sni_hostname": host} if cfg.tls.server_name else {}
        headers = {"Content-Type": "application/json"}
        for _ in range(cfg.warmup):
            try:
                await client.post(url, content=body, headers=headers, extensions=ext)
            except httpx.HTTPError:
                pass
        deadline = await window.open()
        j = 0
        while (cfg.loop == 0 or j < cfg.loop) and (deadline is None or time.perf_counter() < deadline):
            start = time.perf_counter()
            r, detail = None, ""
            try:
                r = await client.post(url, content=body, headers=headers, extensions=ext)
                status = "OK" if r.status_code == 200 else f"HTTP_{r.status_code}"
                if r.status_code != 200:
                    detail = r.text[:300]
            except httpx.HTTPError as exc:
                status, detail = type(exc).__name__, str(exc)[:300]
            rec.record(i, j, status, start, time.perf_counter(), lambda r=r: r.json(), detail)
            j += 1


def _proc_main(cfg: BenchConfig, task_ids: list[int], q: Any) -> None:
    """One ``--procs`` process: always answers the parent, with its measurements or with the error
    that stopped it (the parent raises it as the single-process run would)."""
    out: dict[str, Any] = {}
    try:
        asyncio.run(_worker_async(cfg, task_ids, out))
    except KeyboardInterrupt:
        pass
    except TeeserveError as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # a bug: the parent reports it rather than waiting for an answer
        out = {"error": f"internal error in a benchmark process: {type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    q.put(out)


def _collect(ps: list[Any], q: Any) -> list[dict[str, Any]]:
    """The answers of the ``--procs`` processes. Ctrl-C reaches them too (the terminal signals the
    whole group): keep collecting, each answers with what it measured. A process that died without
    answering, or that answered with an error, is a ClientError rather than a wait for ever."""
    import queue

    from ._channel import ClientError

    outs: list[dict[str, Any]] = []
    while len(outs) < len(ps):
        try:
            outs.append(q.get(timeout=0.5))
        except KeyboardInterrupt:
            continue
        except queue.Empty:
            dead = [p for p in ps if p.exitcode is not None]
            if len(dead) == len(ps):  # every process has exited: whatever was sent has arrived
                try:
                    outs.append(q.get(timeout=0.5))
                    continue
                except queue.Empty:
                    codes = ", ".join(str(p.exitcode) for p in ps)
                    raise ClientError(f"a benchmark process (--procs) ended without a result (exit statuses "
                                      f"{codes})") from None
    for p in ps:
        p.join()
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise ClientError(errors[0])
    return outs


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the benchmark and return its measurements (printing per-request lines as configured)."""
    if cfg.img and cfg.batch != 1:
        from ._channel import ClientError

        raise ClientError("-img needs -batch 1 (as in the reference client)")
    tasks = list(range(cfg.cnum))
    procs = max(1, min(cfg.procs, cfg.cnum))
    if procs == 1:
        out: dict[str, Any] = {}
        try:
            asyncio.run(_worker_async(cfg, tasks, out))
        except KeyboardInterrupt:
            pass
        outs = [out]
    else:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        chunks = [tasks[i::procs] for i in range(procs)]
        ps = [ctx.Process(target=_proc_main, args=(cfg, c, q)) for c in chunks]
        for p in ps:
            p.start()
        outs = _collect(ps, q)
    starts = [o["start_wall"] for o in outs if o.get("start_wall")]
    ends = [o["end_wall"] for o in outs if o.get("end_wall")]
    e2e = (max(ends) - min(starts)) if starts and ends else 0.0
    t_first = min(starts) if starts else 0.0
    # Finish times relative to the earliest window start across processes.
    for o in outs:
        shift = o.get("fin_offset", t_first) - t_first
        o["fin"] = [x + shift for x in o.get("fin", [])]
    lat = [x for o in outs for x in o.get("lat", [])]
    fin = [x for o in outs for x in o.get("fin", [])]
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o.get("errors", {}))
    first = next((o["first"] for o in outs if o.get("first") is not None), None)
    first_error = next((o["first_error"] for o in outs if o.get("first_error")), None)
    return BenchResult(cnum=cfg.cnum, batch=cfg.batch, e2e_s=e2e, requests=len(lat), errors=dict(errors),
                       latencies_ms=lat, finish_times_s=fin, first_response=first, first_error=first_error)


def plot(result: BenchResult, path: str) -> None:
    """Latency over time and a latency histogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(result.finish_times_s, result.latencies_ms, ".", markersize=2)
    a.set_xlabel("time since start (s)")
    a.set_ylabel("latency (ms)")
    a.set_title(f"latency over time (cnum {result.cnum}, batch {result.batch})")
    lat = np.asarray(result.latencies_ms) if result.latencies_ms else np.zeros(1)
    b.hist(lat, bins=min(60, max(10, int(math.sqrt(len(lat))))))
    p = result.percentiles()
    for name in ("p50", "p99"):
        if name in p:
            b.axvline(p[name], linestyle="--", color="k" if name == "p50" else "r", label=f"{name} {p[name]:.1f} ms")
    b.set_xlabel("latency (ms)")
    b.set_ylabel("requests")
    b.set_title(f"{result.requests} requests, {result.tps:.1f} tps")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

