#!/usr/bin/env python
"""Peer benchmark (issue 3 §7): teeserve against KServe 0.21 and MLServer 1.7, side by side in one run.

Goal: on the small digits model (the ONNX file of ``teeserve model make-demo``), batch 1, concurrency 16,
same machine, same run: teeserve's gRPC requests/s >= 1.5x the best Python peer's (KServe's and
MLServer's Open Inference Protocol v2 gRPC), teeserve's REST requests/s >= 1.5x KServe's V1 REST, and
teeserve's p99 lower than theirs.

Servers (``--servers``, default all of them), each in a single-process configuration and in its own
2-process one:

  teeserve       ``teeserve serve``, one process.
  teeserve-w2    ``teeserve serve --workers 2``: a supervisor and 2 serving processes sharing both ports
                 (SO_REUSEPORT), gRPC and REST in each.
  teeserve-w2-pin  the same with ``--worker-cpu-affinity auto``: each worker (every thread of it) pinned
                 to one of the cores, as nginx's ``worker_cpu_affinity auto``.
  teeserve-w2-rr the same with ``--worker-connection-balance round-robin`` too: new connections dealt
                 to the two workers in turn (an eBPF program on the shared ports; needs CAP_BPF or
                 root), where the kernel's hash splits 16 connections 11+5 or worse one time in five.
  teeserve-w4    ``teeserve serve --workers 4``: the same with 4 serving processes (more than this
                 machine's 2 cores: the kernel spreads connections over the workers at random, and
                 more workers make an uneven spread cost less; in the best-configuration comparison
                 only, as no peer has a 4-process configuration).
  kserve         KServe ``ModelServer(workers=1)`` (its default): gRPC and REST in one process.
  kserve-w2      KServe ``ModelServer(workers=2)``: REST from 2 uvicorn processes (spawned by the main
                 process, sharing its socket); KServe's gRPC server stays in the main process, so its
                 gRPC row is single-process (said so in the output).
  mlserver       MLServer ``parallel_workers=0``: gRPC and inference in one process.
  mlserver-pw1   MLServer ``parallel_workers=1`` (its default): gRPC in the server process, inference in
                 1 worker process fed through a queue.

The summary prints the goal ratios twice: best configuration against best configuration (teeserve's
fastest row against the fastest peer row of the protocol, whatever the process counts: the issue's
goal), and at equal process counts (teeserve against KServe workers=1 / MLServer, teeserve --workers 2
against KServe workers=2 / MLServer parallel_workers=1; of teeserve's two 2-process rows, pinned and
not, the faster), with p99 against every peer row compared.

How it is fair:
- Same model file, same request: one real held-out digit (``samples/digit_7_0.png``), batch 1. gRPC
  carries the same 256 tensor bytes to everyone (teeserve: TF Serving ``PredictRequest.tensor_content``;
  peers: OIP ``ModelInferRequest.raw_input_contents``); REST sends the byte-identical JSON body
  ``{"instances": [[[...8x8...]]]}`` to teeserve's and KServe's ``/v1/models/digits-onnx:predict``.
  Every answer is checked (class 7) before the load starts and after it.
- Same inference: every server runs the ONNX file with onnxruntime on the CPU provider, with the same
  intra-/inter-op thread counts (``--intra-op-threads``/``--inter-op-threads``, default 1/1, per serving
  process) and ``OMP_NUM_THREADS``; the peers' sessions are opened exactly as teeserve's backend opens
  its own (``benchmarks/peers/_ort.py``); a worker process opens its own session the same way.
- Same deployment shape: bound to 127.0.0.1, plaintext (TLS cost is bench_serving.py's), per-request
  logging off (KServe's REST workers too). Each row says how many serving processes it has
  (``procs``, as configured) and shows the CPU of each process of the server's tree (``srv CPU% by
  proc``), so one sees that a 2-process configuration really works in 2 processes; a row with fewer
  busy processes than configured gets a NOTE.
- Server CPU is that of the server's whole process tree (the started process and all its descendants,
  read from /proc at both ends of the window): supervisor / main process + workers (+ multiprocessing's
  resource tracker).
- Same load: one load generator for every server (``--loadgen cpp``, the default: gRPC from
  ``benchmarks/grpcload``'s C++ ``grpc_loadgen`` in ``--procs`` threads, REST from
  ``benchmarks/peers/loadgen.py``'s aiohttp clients, its own venv, in ``--procs`` processes; every
  call's status checked), on the same cores as the server, closed loop, 16 clients,
  each with its own connection (the kernel spreads connections over the processes of a server that
  shares a port), ``--warmup`` s not counted, then ``--duration`` s counted; it reports its own CPU so
  that one can see it is not the bottleneck. All servers run for the whole benchmark; the measurements
  alternate between them, in a rotated order each round, so that background load hits everyone alike;
  per row the median round (by requests/s) is reported (``--pick quietest``: the round with the least
  other work on the machine), and server CPU time per request (a figure that background load disturbs
  less). Each row shows the CPU that other work on the machine used in its window; rows where that
  exceeds 20% of a core are flagged as disturbed.
- Every server and load generator runs in a session of its own (``--sessions separate``, as separate
  services); with the kernel's autogroup scheduling each session is a group that shares the cores
  fairly with the others, which costs a multi-process server more than a single-process one
  (docs/serving.md, "Several workers"). ``--sessions shared`` runs them all in this benchmark's session.

The peers live in their own venvs (their pins conflict with teeserve's), made on first use by
``benchmarks/peers/setup_peers.py`` under ``bench-out/peers/`` (pip, ~7 minutes the first time).

Usage:  .venv/bin/python benchmarks/bench_peers.py [--out bench-out/peers-run] [--rounds 3] [--duration 15]
        [--quick] [--servers teeserve,teeserve-w2,teeserve-w2-pin,teeserve-w2-rr,teeserve-w4,kserve,kserve-w2,mlserver,mlserver-pw1]
        [--protocols gRPC,REST] [--teeserve-args "--grpc_max_threads=2"] [--loadgen cpp|python|h2load]
        [--sessions separate|shared]
Prints the table and the ratios; writes results.json and peers.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import setup_peers

MODEL = "digits-onnx"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVERS = ("teeserve", "teeserve-w2", "teeserve-w2-pin", "teeserve-w2-rr", "teeserve-w4", "kserve", "kserve-w2", "mlserver", "mlserver-pw1")
LOADGEN_LABEL = {
    "cpp": "grpc_loadgen (C++) with {n} thread(s) for gRPC, loadgen.py (aiohttp) in {n} process(es) for REST",
    "python": "loadgen.py (grpc.aio/aiohttp), {n} process(es)",
    "h2load": "h2load, {n} thread(s)",
}


@dataclass(frozen=True)
class ServerSpec:
    label: str
    workers: int  # its own multi-process setting (teeserve/KServe --workers, MLServer parallel_workers)
    group: str  # "w1": one serving process; "w2": the server's 2-process configuration
    # serving processes per protocol (what does the work; supervisors / parents not counted)
    procs: dict[str, int]
    note: dict[str, str] = field(default_factory=dict)  # per protocol, printed under the table
    args: tuple[str, ...] = ()  # more command-line options (teeserve's)


SPECS: dict[str, ServerSpec] = {
    "teeserve": ServerSpec("teeserve", 1, "w1", {"gRPC": 1, "REST": 1}),
    "teeserve-w2": ServerSpec("teeserve (workers=2)", 2, "w2", {"gRPC": 2, "REST": 2}),
    # each worker pinned to one of the cores (every thread of it), the load generator left to move
    "teeserve-w2-pin": ServerSpec("teeserve (workers=2, pinned)", 2, "w2", {"gRPC": 2, "REST": 2},
                                  args=("--worker-cpu-affinity=auto",)),
    # pinned, and new connections dealt to the workers in turn instead of by the kernel's hash
    "teeserve-w2-rr": ServerSpec("teeserve (workers=2, pinned, round-robin)", 2, "w2", {"gRPC": 2, "REST": 2},
                                 args=("--worker-cpu-affinity=auto", "--worker-connection-balance=round-robin")),
    # more serving processes than cores: SO_REUSEPORT hands each connection to a worker at random, and
    # with 4 workers an unlucky split (say 11 of 16 connections on one) leaves no core idle
    "teeserve-w4": ServerSpec("teeserve (workers=4)", 4, "w4", {"gRPC": 4, "REST": 4}),
    "kserve": ServerSpec("KServe 0.21", 1, "w1", {"gRPC": 1, "REST": 1}),
    "kserve-w2": ServerSpec(
        "KServe 0.21 (workers=2)",
        2,
        "w2",
        {"gRPC": 1, "REST": 2},
        {
            "gRPC": "KServe's --workers applies to REST only: its gRPC server stays in the main process, "
            "so this gRPC row is single-process (the REST workers idle meanwhile)"
        },
    ),
    "mlserver": ServerSpec("MLServer 1.7", 0, "w1", {"gRPC": 1}),
    "mlserver-pw1": ServerSpec(
        "MLServer 1.7 (parallel_workers=1)",
        1,
        "w2",
        {"gRPC": 2},
        {"gRPC": "MLServer parallel_workers=1: gRPC in the server process, inference in 1 worker process"},
    ),
}
# Measured on this kind of machine when the issue was written (issue 3 §7), for orientation only.
# A server process that used at least this much of a core in a measured window counts as serving.
BUSY_PROC_PCT = 10.0
REFERENCE = {("KServe", "gRPC"): 1350.0, ("KServe", "REST"): 1550.0, ("MLServer", "gRPC"): 500.0}


def log(msg: str) -> None:
    print(f"[bench_peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes -----------------------------------------------------------------------------------


def connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by each of ``pids`` (read from /proc): which
    worker the kernel's SO_REUSEPORT hash gave the clients' connections to, the split that decides a
    multi-worker round (docs/serving.md, "How the connections fall on the workers")."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                inodes.add(f[9])
    out: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        n = 0
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            n += link.startswith("socket:[") and link[8:-1] in inodes
        if n:
            out[pid] = n
    return out


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, user+system CPU seconds) for every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return float(sum(v) - idle), float(sum(v))


#: How servers and load generators are started: each in a session of its own (``--sessions separate``,
#: the default: as separate services, and so, where the kernel groups tasks by session (autogroup,
#: ``/proc/sys/kernel/sched_autogroup_enabled``), scheduled as separate groups that share the cores
#: fairly, as containers or systemd services would be) or in the benchmark's own session
#: (``--sessions shared``: a process group of their own, scheduled thread by thread). Either way each
#: has its own process group, which stop() and the load generator's cleanup kill.
SPAWN: dict[str, Any] = {"start_new_session": True}


class ServerProc:
    """A server started in its own session (so that its whole process group can be stopped)."""

    def __init__(
        self,
        key: str,
        label: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        ready_url: str,
        cwd: Path | None = None,
    ) -> None:
        self.key, self.label, self.ready_url, self.log_path = key, label, ready_url, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop(), after the server exits)
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd or ROOT, **SPAWN
        )

    def cpu_by_pid(self) -> dict[int, float]:
        """CPU seconds of the server and each of its descendants, by pid: the whole process tree
        (teeserve's and KServe's worker processes under their supervisor / main process, MLServer's
        inference workers, multiprocessing's resource tracker)."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree: dict[int, float] = {}
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            if pid in table:
                tree[pid] = table[pid][1]
            todo.extend(children.get(pid, ()))
        return tree

    def cpu_seconds(self) -> float:
        """CPU time of the whole process tree (see cpu_by_pid)."""
        return sum(self.cpu_by_pid().values())

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(
            f"{self.label} not ready after {timeout:.0f} s ({self.ready_url}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        # SIGTERM to the started process only, as an orchestrator stops a container's main process:
        # a supervisor / main process stops its own workers (teeserve --workers, KServe workers=2,
        # MLServer's inference workers); signalling the whole group would hand each worker a second
        # SIGTERM of the supervisor's (teeserve's workers take a second one as "stop now").
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left in its group (e.g. MLServer workers), by process-group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        self._log.close()


# --- inputs --------------------------------------------------------------------------------------


@dataclass
class Inputs:
    model_dir: Path  # .../models/digits-onnx  (numbered versions inside)
    onnx: Path  # .../models/digits-onnx/1/model.onnx
    label: int  # the digit in the request
    predict_bin: Path  # TF Serving PredictRequest
    oip_bin: Path  # OIP ModelInferRequest
    body_json: Path  # {"instances": ...}


def prepare_inputs(out: Path, kserve_py: Path, sample: str) -> Inputs:
    import numpy as np

    from teeserve._proto import pb
    from teeserve.models import digits_image_to_input
    from teeserve.serving._tensors import ndarray_to_tensor_proto

    models = out / "models"
    onnx = models / MODEL / "1" / "model.onnx"
    samples = out / "samples"
    if not onnx.exists() or not (samples / sample).exists():
        log("making the digits demo model (teeserve model make-demo, ~1 minute) ...")
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "teeserve",
                "model",
                "make-demo",
                "-o",
                str(models),
                "--samples-out",
                str(samples),
                "--force",
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0 or not onnx.exists():
            raise SystemExit(f"teeserve model make-demo failed:\n{r.stdout}\n{r.stderr}")
        # make-demo names the ONNX copy after --name + "-onnx": digits-onnx, the name served here
    m = re.match(r"digit_(\d)_", sample)
    if not m:
        raise SystemExit(f"--sample {sample}: expected a name like digit_7_0.png")
    x = np.asarray(digits_image_to_input(samples / sample), dtype=np.float32).reshape(1, 8, 8)
    req = pb.PredictRequest()
    req.model_spec.name = MODEL
    req.model_spec.signature_name = "serving_default"
    req.inputs["images"].CopyFrom(ndarray_to_tensor_proto(x))
    predict_bin = out / "request-predict.bin"
    predict_bin.write_bytes(req.SerializeToString())
    body_json = out / "request-v1.json"
    body_json.write_text(json.dumps({"instances": x.tolist()}, separators=(",", ":")))
    npy = out / "request.npy"
    np.save(npy, x)
    oip_bin = out / "request-oip.bin"
    subprocess.run(
        [
            str(kserve_py),
            str(PEERS / "oip.py"),
            "make",
            "--input",
            str(npy),
            "--model",
            MODEL,
            "--out",
            str(oip_bin),
        ],
        check=True,
    )
    assert req.inputs["images"].tensor_content == x.tobytes()
    return Inputs(models / MODEL, onnx, int(m.group(1)), predict_bin, oip_bin, body_json)


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    server: ServerProc
    protocol: str  # "gRPC" | "REST"
    wire: str  # what goes over the wire
    kind: str  # loadgen --kind
    target: str
    method: str = ""
    request: Path = Path()
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: teeserve's Prometheus URL: its per-status request counters give the errors of a run whose
    #: generator cannot see them (h2load on gRPC: the status travels in HTTP/2 trailers).
    metrics_url: str = ""

    @property
    def name(self) -> str:
        return f"{self.server.label} {self.protocol}"


def _env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(args.intra_op_threads),
        PEER_INTRA_OP_THREADS=str(args.intra_op_threads),
        PEER_INTER_OP_THREADS=str(args.inter_op_threads),
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


METRICS_PATH = "/monitoring/prometheus/metrics"


def _monitoring_config(logs: Path) -> Path:
    path = logs / "teeserve-monitoring.config"
    path.write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    return path


def grpc_predicts_by_code(url: str) -> dict[str, float]:
    """teeserve's ``teeserve_requests_total`` for gRPC Predict, by status code."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == "teeserve_requests_total" and smp.labels.get("protocol") == "GRPC" \
                    and smp.labels.get("api") == "Predict":
                out[smp.labels["code"]] = out.get(smp.labels["code"], 0.0) + smp.value
    return out


def start_servers(args: argparse.Namespace, inp: Inputs, pys: dict[str, Path], logs: Path) -> list[Endpoint]:
    eps: list[Endpoint] = []
    started: list[ServerProc] = []
    try:
        for key in ("teeserve", "teeserve-w2", "teeserve-w2-pin", "teeserve-w2-rr", "teeserve-w4"):
            if key not in args.servers:
                continue
            spec = SPECS[key]
            g, r = free_port(), free_port()
            # --workers N > 1: a supervisor and N serving processes sharing both ports (SO_REUSEPORT);
            # 1 worker is teeserve's default single process (the flag is left out, as before).
            workers = [f"--workers={spec.workers}"] if spec.workers > 1 else []
            s = ServerProc(
                key,
                spec.label,
                [
                    sys.executable,
                    "-m",
                    "teeserve",
                    "serve",
                    f"--port={g}",
                    f"--rest_api_port={r}",
                    f"--model_name={MODEL}",
                    f"--model_base_path={inp.model_dir}",
                    "--host",
                    "127.0.0.1",
                    f"--tensorflow_intra_op_parallelism={args.intra_op_threads}",
                    f"--tensorflow_inter_op_parallelism={args.inter_op_threads}",
                    "--file_system_poll_wait_seconds=0",
                    "--log-level=warning",
                    f"--monitoring_config_file={_monitoring_config(logs)}",
                    *workers,
                    *spec.args,
                    *args.teeserve_args.split(),
                ],
                _env(args),
                logs / f"{key}.log",
                f"http://127.0.0.1:{r}/v1/health/ready",
            )
            started.append(s)
            eps += [
                Endpoint(s, "gRPC", "TF Serving Predict", "grpc", f"127.0.0.1:{g}", PREDICT, inp.predict_bin,
                         metrics_url=f"http://127.0.0.1:{r}{METRICS_PATH}"),
                Endpoint(
                    s,
                    "REST",
                    "TF Serving REST :predict",
                    "http",
                    f"http://127.0.0.1:{r}/v1/models/{MODEL}:predict",
                    request=inp.body_json,
                ),
            ]
        for key in ("kserve", "kserve-w2"):
            if key not in args.servers:
                continue
            spec = SPECS[key]
            g, r = free_port(), free_port()
            s = ServerProc(
                key,
                spec.label,
                [
                    str(pys["kserve"]),
                    str(PEERS / "kserve_onnx.py"),
                    "--model_name",
                    MODEL,
                    "--model_path",
                    str(inp.onnx),
                    "--http_port",
                    str(r),
                    "--grpc_port",
                    str(g),
                    "--workers",
                    str(spec.workers),
                ],
                _env(args),
                logs / f"{key}.log",
                f"http://127.0.0.1:{r}/v1/models/{MODEL}",
            )
            started.append(s)
            eps += [
                Endpoint(s, "gRPC", "OIP v2 ModelInfer", "grpc", f"127.0.0.1:{g}", MODEL_INFER, inp.oip_bin),
                Endpoint(
                    s,
                    "REST",
                    "KServe V1 REST :predict",
                    "http",
                    f"http://127.0.0.1:{r}/v1/models/{MODEL}:predict",
                    request=inp.body_json,
                ),
            ]
        for key in ("mlserver", "mlserver-pw1"):
            if key not in args.servers:
                continue
            label, workers = SPECS[key].label, SPECS[key].workers
            g, r, mport = free_port(), free_port(), free_port()
            home = logs / key
            (home / MODEL).mkdir(parents=True, exist_ok=True)
            (home / "settings.json").write_text(
                json.dumps(
                    {
                        "debug": False,
                        "host": "127.0.0.1",
                        "http_port": r,
                        "grpc_port": g,
                        "metrics_port": mport,
                        "parallel_workers": workers,
                        "metrics_dir": str(home / ".metrics"),
                        "environments_dir": str(home / ".envs"),
                    },
                    indent=2,
                )
            )
            (home / MODEL / "model-settings.json").write_text(
                json.dumps(
                    {
                        "name": MODEL,
                        "implementation": "mlserver_onnx.OnnxRuntime",
                        "parameters": {"uri": str(inp.onnx)},
                    },
                    indent=2,
                )
            )
            # the settings that keep it on loopback also go in the environment (MLSERVER_*), which
            # MLServer reads as well, so that a settings file it did not find cannot widen them
            env = _env(
                args,
                PYTHONPATH=str(PEERS),
                MLSERVER_HOST="127.0.0.1",
                MLSERVER_HTTP_PORT=str(r),
                MLSERVER_GRPC_PORT=str(g),
                MLSERVER_METRICS_PORT=str(mport),
            )
            s = ServerProc(
                key,
                label,
                [str(pys["mlserver"].parent / "mlserver"), "start", str(home)],
                env,
                logs / f"{key}.log",
                f"http://127.0.0.1:{r}/v2/models/{MODEL}/ready",
                cwd=home,
            )
            started.append(s)
            eps.append(
                Endpoint(s, "gRPC", "OIP v2 ModelInfer", "grpc", f"127.0.0.1:{g}", MODEL_INFER, inp.oip_bin)
            )
        for s in started:
            s.wait_ready(args.start_timeout)
            log(
                f"{s.label} ready (pid {s.proc.pid}, log {s.log_path.relative_to(ROOT) if s.log_path.is_relative_to(ROOT) else s.log_path})"
            )
    except BaseException:
        for s in started:
            s.stop()
        raise
    return eps


def check_answers(eps: list[Endpoint], inp: Inputs, kserve_py: Path) -> None:
    """Every endpoint must answer the request with the right digit before it is loaded (and after).
    Where several processes serve a port, several requests go out, each on a new connection, so that
    (the kernel spreading connections over them) every process is very likely asked."""
    import grpc

    from teeserve._proto import pb
    from teeserve.serving._tensors import tensor_proto_to_ndarray

    for ep in eps:
        body = ep.request.read_bytes()
        tries = 8 if SPECS[ep.server.key].procs[ep.protocol] > 1 and ep.method != MODEL_INFER else 1
        for _ in range(tries):
            got = _ask(ep, body, kserve_py, grpc, pb, tensor_proto_to_ndarray)
            if got != inp.label:
                raise RuntimeError(f"{ep.name}: answered class {got}, expected {inp.label}")
        log(f"{ep.name} ({ep.wire}) answers {got}{f' ({tries} connections)' if tries > 1 else ''}: ok")


def _ask(ep: Endpoint, body: bytes, kserve_py: Path, grpc: Any, pb: Any, to_ndarray: Any) -> int:
    """One request on a new connection; the class it answered."""
    if ep.kind == "http":
        req = urllib.request.Request(ep.target, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(json.loads(r.read())["predictions"][0]["classes"])
    if ep.method == PREDICT:
        with grpc.insecure_channel(ep.target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            resp = pb.PredictResponse.FromString(ch.unary_unary(PREDICT)(body, timeout=30))
        return int(to_ndarray(resp.outputs["classes"]).reshape(-1)[0])
    r = subprocess.run(
        [
            str(kserve_py),
            str(PEERS / "oip.py"),
            "check",
            "--target",
            ep.target,
            "--request",
            str(ep.request),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{ep.name}: check request failed:\n{r.stderr[-2000:]}")
    classes = json.loads(r.stdout)["outputs"]["classes"]
    while isinstance(classes, list):
        classes = classes[0]
    return int(classes)


# --- measuring -----------------------------------------------------------------------------------


def wait_quiet(limit_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (at most ``limit_s``) until the machine is nearly idle over one second; return the seconds
    waited. The benchmark shares the machine with whatever else runs on it."""
    t_start = time.monotonic()
    while True:
        b0, t0 = machine_busy()
        time.sleep(1.0)
        b1, t1 = machine_busy()
        busy = 100.0 * (b1 - b0) / max(t1 - t0, 1.0)
        waited = time.monotonic() - t_start
        if busy < threshold_pct or waited >= limit_s:
            return waited


def measure(
    ep: Endpoint, args: argparse.Namespace, loadgen_py: Path, idle: list[ServerProc]
) -> dict[str, Any]:
    if args.wait_quiet > 0:
        waited = wait_quiet(args.wait_quiet)
        if waited > 1.5:
            log(f"waited {waited:.0f} s for the machine to be quiet before {ep.name}")
    t0 = time.time() + 0.2
    argv = [
        str(loadgen_py),
        str(PEERS / "loadgen.py"),
        "--kind",
        ep.kind,
        "--target",
        ep.target,
        "--request",
        str(ep.request),
        "--concurrency",
        str(args.concurrency),
        "--procs",
        str(args.procs),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--startup",
        str(args.startup),
        "--t0",
        repr(t0),
        "--grpc-channels",
        str(args.grpc_channels),
        "--tool",
        args.loadgen,
    ]
    if args.cpp_exe:
        argv += ["--cpp-exe", str(args.cpp_exe)]
    if ep.method:
        argv += ["--method", ep.method]
    codes_before = grpc_predicts_by_code(ep.metrics_url) if ep.metrics_url else None
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **SPAWN
    )
    try:
        t_measure = t0 + args.startup + args.warmup
        time.sleep(max(0.0, t_measure - time.time()))
        tree_a, (busy_a, tot_a) = ep.server.cpu_by_pid(), machine_busy()
        idle_a = sum(s.cpu_seconds() for s in idle)
        port = int(re.search(r":(\d+)", ep.target.split("//")[-1]).group(1))
        conns = sorted(connections_by_pid(port, list(tree_a)).values(), reverse=True)
        time.sleep(max(0.0, t_measure + args.duration - time.time()))
        tree_b, (busy_b, tot_b) = ep.server.cpu_by_pid(), machine_busy()
        idle_b = sum(s.cpu_seconds() for s in idle)
        out, err = proc.communicate(timeout=args.startup + args.warmup + args.duration + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed on {ep.name}:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    if codes_before is not None and res.get("errors") is None:
        time.sleep(0.6)  # --workers: each worker writes its counts every 0.25 s
        after = grpc_predicts_by_code(ep.metrics_url)
        delta = {code: after.get(code, 0.0) - codes_before.get(code, 0.0) for code in after}
        # Warm-up and start-up calls are counted too: every call of the run, not just the measured ones.
        res["errors"] = int(sum(v for code, v in delta.items() if code != "OK"))
        res["status_checked_calls"] = int(sum(delta.values()))
        res["status_by_code"] = {k: int(v) for k, v in delta.items() if v}
    # Per process of the server's tree, over the window (a process that started in it counts from
    # 0; one that ended in it is lost, and flagged): shows how many processes really did the work.
    per_pid = {pid: cpu - tree_a.get(pid, 0.0) for pid, cpu in tree_b.items()}
    cpu_a, cpu_b = 0.0, sum(per_pid.values())
    res["server_tree_pids"] = sorted(tree_b)
    res["server_procs_gone"] = sorted(set(tree_a) - set(tree_b))
    res["server_cpu_pct_by_proc"] = sorted(
        (100.0 * c / args.duration for c in per_pid.values()), reverse=True
    )
    res["server_busy_procs"] = sum(1 for x in res["server_cpu_pct_by_proc"] if x >= BUSY_PROC_PCT)
    res["server_cpu_pct"] = 100.0 * (cpu_b - cpu_a) / args.duration
    res["server_cpu_us_per_req"] = (
        1e6 * (cpu_b - cpu_a) / res["requests"] if res["requests"] else float("nan")
    )
    res["machine_busy_pct"] = 100.0 * (busy_b - busy_a) / max(tot_b - tot_a, 1.0)
    # CPU used by anything else on the machine in the window, in % of one core: other people's work
    # makes the row unreliable, so it is shown next to it.
    # The other servers of this benchmark idle meanwhile; their CPU is shown apart.
    res["idle_servers_cpu_pct"] = 100.0 * (idle_b - idle_a) / args.duration
    res["other_cpu_pct"] = max(
        0.0,
        res["machine_busy_pct"] * (os.cpu_count() or 1)
        - res["server_cpu_pct"]
        - sum(res["loadgen_cpu_pct_per_proc"])
        - res["idle_servers_cpu_pct"],
    )
    res["server_conns_by_proc"] = conns
    res["server_alive"] = ep.server.proc.poll() is None
    if not res["server_alive"]:
        raise RuntimeError(
            f"{ep.server.label} died during the run (exit status {ep.server.proc.returncode}); log:\n{ep.server.log_tail()}"
        )
    return res


def pick_round(rounds: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """median: the median round by requests/s; quietest: the round in which other work on the machine
    used the least CPU (for a shared, busy machine)."""
    if how == "quietest":
        return min(rounds, key=lambda r: r["other_cpu_pct"])
    ordered = sorted(rounds, key=lambda r: r["rps"])
    return ordered[(len(ordered) - 1) // 2]


def _is_ours(row: dict[str, Any]) -> bool:
    return str(row["key"]).startswith("teeserve")


GOAL = 1.5


def _compare(ours: list[dict[str, Any]], peers: list[dict[str, Any]], proto: str) -> dict[str, Any] | None:
    """teeserve's fastest row among ``ours`` against the fastest of ``peers`` (same protocol): the
    requests/s ratio (goal >= 1.5x) and teeserve's p99 against every peer row's."""
    ours = [r for r in ours if r["protocol"] == proto]
    peers = [r for r in peers if r["protocol"] == proto]
    if not ours or not peers:
        return None
    mine = max(ours, key=lambda r: r["rps"])
    best = max(peers, key=lambda r: r["rps"])
    return {
        "teeserve": f"{mine['server']} {proto}",
        "teeserve_key": mine["key"],
        "teeserve_procs": mine["procs"],
        "teeserve_rps": mine["rps"],
        "best_peer": f"{best['server']} {proto}",
        "best_peer_key": best["key"],
        "best_peer_procs": best["procs"],
        "best_peer_rps": best["rps"],
        "ratio": mine["rps"] / best["rps"] if best["rps"] else float("inf"),
        "goal": GOAL,
        "met": bool(best["rps"]) and mine["rps"] / best["rps"] >= GOAL,
        "teeserve_p99_ms": mine["p99_ms"],
        "best_peer_p99_ms": best["p99_ms"],
        "peers": [
            {
                "name": f"{p['server']} {proto}",
                "key": p["key"],
                "procs": p["procs"],
                "rps": p["rps"],
                "p99_ms": p["p99_ms"],
            }
            for p in peers
        ],
        "max_peer_p99_ms": max(p["p99_ms"] for p in peers),
        "min_peer_p99_ms": min(p["p99_ms"] for p in peers),
        "p99_lower_than_every_peer": all(mine["p99_ms"] < p["p99_ms"] for p in peers),
        "cpu_per_req_ratio": best["server_cpu_us_per_req"] / mine["server_cpu_us_per_req"]
        if mine["server_cpu_us_per_req"]
        else float("nan"),
    }


def summarize(eps: list[Endpoint], how: str = "median") -> dict[str, Any]:
    rows = []
    order = {k: i for i, k in enumerate(SERVERS)}
    for ep in sorted(eps, key=lambda e: (e.protocol != "gRPC", order[e.server.key])):  # gRPC rows, then REST
        m = pick_round(ep.rounds, how)
        spec = SPECS[ep.server.key]
        rows.append(
            {
                "server": ep.server.label,
                "key": ep.server.key,
                "protocol": ep.protocol,
                "wire": ep.wire,
                "group": spec.group,
                "workers": spec.workers,
                "procs": spec.procs[ep.protocol],
                "note": spec.note.get(ep.protocol, ""),
                "rps": m["rps"],
                "p50_ms": m["p50_ms"],
                "p99_ms": m["p99_ms"],
                "errors": None
                if any(r["errors"] is None for r in ep.rounds)
                else sum(r["errors"] for r in ep.rounds),
                # h2load on teeserve's gRPC: calls whose status the server's own counters gave (all
                # rounds, warm-up included), by code
                "status_checked_calls": sum(r.get("status_checked_calls", 0) for r in ep.rounds) or None,
                "server_cpu_us_per_req": statistics.median(r["server_cpu_us_per_req"] for r in ep.rounds),
                "server_cpu_pct": m["server_cpu_pct"],
                "server_cpu_pct_by_proc": m["server_cpu_pct_by_proc"],
                "server_busy_procs": m["server_busy_procs"],
                "server_busy_procs_rounds": [r["server_busy_procs"] for r in ep.rounds],
                "machine_busy_pct": m["machine_busy_pct"],
                "other_cpu_pct": m["other_cpu_pct"],
                "idle_servers_cpu_pct": m["idle_servers_cpu_pct"],
                "loadgen_cpu_pct_per_proc": m["loadgen_cpu_pct_per_proc"],
                "loadgen_cpu_us_per_req": m["loadgen_cpu_us_per_req"],
                "rps_rounds": [r["rps"] for r in ep.rounds],
                "conns_by_proc_rounds": [r.get("server_conns_by_proc", []) for r in ep.rounds],
                "p99_rounds": [r["p99_ms"] for r in ep.rounds],
            }
        )
    ours = [r for r in rows if _is_ours(r)]
    peers = [r for r in rows if not _is_ours(r)]
    kserve = [r for r in peers if r["key"].startswith("kserve")]
    # The goals of issue 3 §7, best configuration against best configuration: gRPC against every
    # Python peer (KServe's and MLServer's OIP gRPC), REST against KServe's V1 REST.
    ratios: dict[str, Any] = {}
    for goal_name, proto, against in (("grpc", "gRPC", peers), ("rest", "REST", kserve)):
        q = _compare(ours, against, proto)
        if q:
            ratios[goal_name] = q
    # The same at equal process counts: each server's single-process configuration ("w1": teeserve,
    # KServe workers=1, MLServer parallel_workers=0) and its 2-process one ("w2": teeserve --workers 2,
    # KServe workers=2 (REST only: its gRPC stays single-process), MLServer parallel_workers=1).
    equal: dict[str, Any] = {}
    for group in ("w1", "w2"):
        g_ours = [r for r in ours if r["group"] == group]
        g_peers = [r for r in peers if r["group"] == group]
        for goal_name, proto, against in (
            ("grpc", "gRPC", g_peers),
            ("rest", "REST", [r for r in g_peers if r["key"].startswith("kserve")]),
        ):
            q = _compare(g_ours, against, proto)
            if q:
                equal.setdefault(group, {})[goal_name] = q
    return {"rows": rows, "ratios": ratios, "ratios_equal_procs": equal}


def print_report(summary: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any]) -> None:
    rows = summary["rows"]
    print()
    print(
        f"Peer benchmark: {MODEL} (ONNX, batch 1), concurrency {args.concurrency}, {args.duration:g} s per "
        f"measurement after {args.warmup:g} s warm-up, {args.rounds} round(s), "
        f"load generator: {LOADGEN_LABEL[args.loadgen].format(n=args.procs)}, intra/inter-op threads {args.intra_op_threads}/"
        f"{args.inter_op_threads}, {os.cpu_count()} CPUs, plaintext, 127.0.0.1, {args.sessions} sessions; rows show the "
        f"{'median round by req/s' if args.pick == 'median' else 'quietest round'}"
        + (f"; teeserve's extra flags: {args.teeserve_args}" if args.teeserve_args else "")
    )
    print(f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}")
    hdr = (
        f"{'server':<34} {'protocol':<5} {'wire':<24} {'procs':>5} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'srv CPU us/req':>14} {'srv CPU%':>8} {'srv CPU% by proc':>16} "
        f"{'gen CPU%/proc':>13} "
        f"{'other CPU%':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        gen = "/".join(f"{x:.0f}" for x in r["loadgen_cpu_pct_per_proc"])
        by_proc = "+".join(f"{x:.0f}" for x in r["server_cpu_pct_by_proc"] if x >= 1.0) or "0"
        mark = "*" if r["note"] else ""
        print(
            f"{r['server'] + mark:<34} {r['protocol']:<5} {r['wire']:<24} {r['procs']:>5} {r['rps']:>7.0f} "
            f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {'n/a' if r['errors'] is None else r['errors']:>6} "
            f"{r['server_cpu_us_per_req']:>14.0f} {r['server_cpu_pct']:>8.0f} {by_proc:>16} {gen:>13} "
            f"{r['other_cpu_pct']:>10.0f}"
        )
    print(
        "procs = the server's serving processes for that protocol as configured (supervisors / parents not "
        "counted). CPU columns in % of one core over the measured window: srv = the server's whole process "
        "tree (supervisor or main process + workers), by proc = each process of that tree using >= 1% "
        f"(processes >= {BUSY_PROC_PCT:g}% count as busy), gen = each load-generator process, other = "
        "everything else on the machine (background noise; the benchmark's idle servers used at most "
        + f"{max(r['idle_servers_cpu_pct'] for r in rows):.1f}%" + ")."
    )
    for r in rows:
        if r["note"]:
            print(f"* {r['server']} {r['protocol']}: {r['note']}.")
    for r in rows:
        if r["procs"] > 1 and max(r["server_busy_procs_rounds"]) < r["procs"]:
            print(
                f"NOTE: {r['server']} {r['protocol']} is configured for {r['procs']} serving processes but "
                f"only {max(r['server_busy_procs_rounds'])} used >= {BUSY_PROC_PCT:g}% of a core in any "
                "round."
            )
    noisy = [r for r in rows if r["other_cpu_pct"] > 20.0]
    if noisy:
        print(
            "WARNING: other work used > 20% of a core during "
            + ", ".join(f"{r['server']} {r['protocol']} ({r['other_cpu_pct']:.0f}%)" for r in noisy)
            + ": those rows are disturbed; rerun on a quiet machine."
        )
    if args.rounds > 1:
        print(
            "req/s per round: "
            + "; ".join(
                f"{r['server']} {r['protocol']}: " + ", ".join(
                    f"{x:.0f}" + (f" ({'+'.join(map(str, c))})" if len(c) > 1 else "")
                    for x, c in zip(r["rps_rounds"], r["conns_by_proc_rounds"])
                )
                for r in rows
            )
        )
        print("(in parentheses: the client connections held by each serving process in that round)")
    print()

    def line(title: str, q: dict[str, Any]) -> str:
        peers_p99 = ", ".join(f"{p['name']} {p['p99_ms']:.2f}" for p in q["peers"])
        met = "MET" if q["met"] else "NOT MET"
        lower = "lower than every peer" if q["p99_lower_than_every_peer"] else "NOT lower than every peer"
        return (
            f"  {title}: {q['teeserve']} {q['teeserve_rps']:.0f} req/s / {q['best_peer']} "
            f"{q['best_peer_rps']:.0f} req/s = {q['ratio']:.2f}x (goal >= {q['goal']}x: {met})\n"
            f"      p99 {q['teeserve_p99_ms']:.2f} ms vs {peers_p99} ms: {lower}; "
            f"server CPU per request, {q['best_peer']} / teeserve = {q['cpu_per_req_ratio']:.2f}x"
        )

    ratios = summary["ratios"]
    if ratios:
        print("Goals of issue 3 §7, best configuration of each side (any process count):")
        for key, title in (
            ("grpc", "gRPC, teeserve / best Python peer"),
            ("rest", "REST, teeserve / best KServe V1 REST"),
        ):
            if key in ratios:
                print(line(title, ratios[key]))
    equal = summary.get("ratios_equal_procs", {})
    for group, title in (
        ("w1", "At equal process counts, 1 serving process each"),
        ("w2", "At equal process counts, each server's 2-process configuration"),
    ):
        if group not in equal:
            continue
        print(f"{title}:")
        for key, proto_title in (("grpc", "gRPC"), ("rest", "REST (vs KServe V1 REST)")):
            q = equal[group].get(key)
            if q:
                print(line(proto_title, q))
                odd = [p for p in q["peers"] if p["procs"] != q["teeserve_procs"]]
                if odd:
                    print(
                        "    (serving processes: teeserve "
                        + str(q["teeserve_procs"])
                        + ", "
                        + ", ".join(f"{p['name']} {p['procs']}" for p in q["peers"])
                        + ")"
                    )
    alt = summary.get("alternative", {})
    if alt.get("ratios") and args.rounds > 1:
        parts = [
            f"{k} {q['ratio']:.2f}x, p99 {'lower' if q['p99_lower_than_every_peer'] else 'NOT lower'}"
            for k, q in alt["ratios"].items()
        ]
        for group, g in alt.get("ratios_equal_procs", {}).items():
            parts += [f"{group} {k} {q['ratio']:.2f}x" for k, q in g.items()]
        print(f"(with the {alt['pick']} round of each row instead: " + "; ".join(parts) + ")")
    print(
        "(reference numbers of the issue, same kind of machine: KServe ~1,350 req/s gRPC, ~1,550 REST V1; "
        "MLServer ~500 gRPC)"
    )


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    labels = [
        f"{r['server'].replace(' (', chr(10) + '(')}\n{r['protocol']}, {r['procs']} "
        + ("procs" if r["procs"] > 1 else "proc")
        for r in rows
    ]
    colors = [
        ("tab:green" if r["group"] == "w1" else "darkgreen")
        if _is_ours(r)
        else ("silver" if r["group"] == "w1" else "dimgray")
        for r in rows
    ]
    fig, axes = plt.subplots(1, 2, figsize=(max(12.0, 1.15 * len(rows)), 5.2))
    for ax, key, title in (
        (axes[0], "rps", "requests/s (higher is better)"),
        (axes[1], "p99_ms", "p99 latency, ms (lower is better)"),
    ):
        vals = [r[key] for r in rows]
        bars = ax.bar(range(len(rows)), vals, color=colors)
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
        ax.set_title(title)
        for b, v in zip(bars, vals):
            ax.annotate(
                f"{v:.0f}" if key == "rps" else f"{v:.1f}",
                (b.get_x() + b.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    fig.suptitle(
        f"{MODEL}, batch 1, concurrency 16, same machine and run; light: 1 serving process, dark: the "
        "server's 2-process configuration (KServe workers=2: REST only)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------


class _Deadline(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "peers-run")
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS)
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per server and protocol")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--startup", type=float, default=1.5, help="seconds for the generator to start and connect"
    )
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2, help="load-generator processes")
    ap.add_argument(
        "--loadgen",
        choices=("cpp", "python", "h2load"),
        default="cpp",
        help="cpp (default): gRPC through benchmarks/grpcload's grpc_loadgen (C++ on gRPC's own "
        "library, --procs threads, built on first use; needs apt-get install libgrpc++-dev "
        "pkg-config), REST through loadgen.py's aiohttp clients; every status checked; "
        "python: loadgen.py's grpc.aio/aiohttp clients in --procs processes (checks every status, "
        "~2x the CPU per gRPC call of cpp); h2load: nghttp2's h2load with --procs threads (apt-get "
        "install nghttp2-client), the least CPU per request but blind to gRPC statuses (for teeserve "
        "the errors column then comes from its own per-status request counters, read before and "
        "after each run)",
    )
    ap.add_argument(
        "--sessions",
        choices=("separate", "shared"),
        default="separate",
        help="separate (default): every server and load generator in a session of its own, so that "
        "with the kernel's autogroup scheduling each is a group sharing the cores fairly with the "
        "others, as separate services; shared: all in this benchmark's session, scheduled thread by "
        "thread (see docs/serving.md for what that changes)",
    )
    ap.add_argument(
        "--grpc-channels",
        type=int,
        default=0,
        help="gRPC connections per generator process; 0 = one per client (default), as the "
        "reference benchmark client",
    )
    ap.add_argument(
        "--protocols", default="gRPC,REST", help="comma-separated subset of gRPC,REST to measure"
    )
    ap.add_argument(
        "--teeserve-args",
        default="",
        help="extra flags for both teeserve servers (one string, split on spaces), e.g. "
        "'--grpc_max_threads=2' when tuning",
    )
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--inter-op-threads", type=int, default=1)
    ap.add_argument("--sample", default="digit_7_0.png", help="the held-out digit sent in every request")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=45.0,
        help="give up (and stop everything) after this long, venv creation included",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="before each measurement, wait up to this many seconds for the machine to be "
        "nearly idle (< 15%% busy); 0 = do not wait",
    )
    ap.add_argument(
        "--pick",
        choices=("median", "quietest"),
        default="median",
        help="which round a row shows: the median by requests/s (default), or the one with the "
        "least other work on the machine (for a shared machine); results.json has both",
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 5 s (a smoke run, not a result)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 5.0, 2.0
    args.protocols = [p for p in args.protocols.split(",") if p]
    if not args.protocols or any(p not in ("gRPC", "REST") for p in args.protocols):
        ap.error(f"--protocols: a comma-separated subset of gRPC,REST, not {','.join(args.protocols)!r}")
    args.servers = [s for s in args.servers.split(",") if s]
    bad = [s for s in args.servers if s not in SERVERS]
    if bad:
        ap.error(f"unknown server(s): {', '.join(bad)}")
    if "teeserve-w2-rr" in args.servers:
        from teeserve.serving._balance import BalanceUnavailable, RoundRobin

        try:
            RoundRobin(2).close()
        except BalanceUnavailable as exc:  # no CAP_BPF here: the rest of the run still means something
            print(f"teeserve-w2-rr left out: the kernel refuses --worker-connection-balance's eBPF program "
                  f"({exc.strerror or exc})", file=sys.stderr)
            args.servers.remove("teeserve-w2-rr")
    if args.rounds < 1 or args.duration <= 0 or args.concurrency < 1 or args.procs < 1:
        ap.error("--rounds, --concurrency and --procs must be >= 1, --duration > 0")
    if args.sessions == "shared":
        SPAWN.clear()
        SPAWN["process_group"] = 0

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise _Deadline(f"--max-minutes {args.max_minutes:g} exceeded")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.max_minutes * 60)))

    args.out = args.out.resolve()  # servers run in other working directories
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    eps: list[Endpoint] = []
    try:
        # kserve's venv is always needed: it holds the OIP messages used to build and check requests
        need = {"loadgen", "kserve"} | (
            {"mlserver"} if any(s.startswith("mlserver") for s in args.servers) else set()
        )
        pys = {n: setup_peers.ensure(ROOT / "bench-out" / "peers", n) for n in sorted(need)}
        args.cpp_exe = None
        if args.loadgen == "cpp" and "gRPC" in args.protocols:
            import grpcload

            try:
                args.cpp_exe = grpcload.ensure_built(ROOT / "bench-out" / "bin")
            except grpcload.BuildError as exc:
                raise SystemExit(f"bench_peers: --loadgen cpp: {exc} (or use --loadgen python)") from None
        inp = prepare_inputs(args.out, pys["kserve"], args.sample)
        eps = [ep for ep in start_servers(args, inp, pys, logs) if ep.protocol in args.protocols]
        check_answers(eps, inp, pys["kserve"])
        meta = {"loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3])}
        for rnd in range(args.rounds):
            order = eps[rnd % len(eps) :] + eps[: rnd % len(eps)]
            for ep in order:
                idle = [s for s in {id(e.server): e.server for e in eps}.values() if s is not ep.server]
                res = measure(ep, args, pys["loadgen"], idle)
                ep.rounds.append(res)
                log(
                    f"round {rnd + 1}/{args.rounds} {ep.name:<42} {res['rps']:7.0f} req/s  p50 {res['p50_ms']:6.2f} ms"
                    f"  p99 {res['p99_ms']:6.2f} ms  errors {'n/a' if res['errors'] is None else res['errors']}  server CPU {res['server_cpu_pct']:.0f}%"
                    f" ({'+'.join(f'{x:.0f}' for x in res['server_cpu_pct_by_proc'] if x >= 1.0) or '0'})"
                    f"  generator CPU {'/'.join(f'{x:.0f}' for x in res['loadgen_cpu_pct_per_proc'])}%"
                    f"  idle servers CPU {res['idle_servers_cpu_pct']:.0f}%  other CPU {res['other_cpu_pct']:.0f}%"
                    f"  connections by proc {'+'.join(map(str, res['server_conns_by_proc'])) or '?'}"
                )
        meta["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        check_answers(eps, inp, pys["kserve"])  # still serving, still right, after the load
    except (KeyboardInterrupt, _Deadline) as exc:
        log(f"stopped: {exc}")
        return 130
    except (RuntimeError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        signal.alarm(0)
        for s in {id(ep.server): ep.server for ep in eps}.values():
            s.stop()
    summary = summarize(eps, args.pick)
    summary["alternative"] = {
        "pick": "quietest" if args.pick == "median" else "median",
        **summarize(eps, "quietest" if args.pick == "median" else "median"),
    }
    summary["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    summary["meta"] = meta
    summary["rounds"] = {ep.name: ep.rounds for ep in eps}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print_report(summary, args, meta)
    try:
        plot(summary, args.out / "peers.png")
        print(f"\nwrote {args.out / 'results.json'} and {args.out / 'peers.png'}")
    except ImportError:
        print(f"\nwrote {args.out / 'results.json'} (matplotlib missing: no plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
