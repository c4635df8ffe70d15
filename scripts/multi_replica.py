#!/usr/bin/env python3
"""Several teeserve replicas behind nginx on one machine, for real: failover under load.

Topology (everything on 127.0.0.1, every process started here is ended here):

    teeserve client bench --(gRPC over mutual TLS)--> nginx stream :N (TLS passthrough, plain TCP)
        --> replica 0 :G0 | replica 1 :G1 | replica 2 :G2     (teeserve serve, SIMULATED TEE)
    each replica, at start: teeserve gramine provision --tee sim --> teeserve broker :B
        (RA-TLS with a SIMULATED quote, policy pins its measurement) --> wrap key --> decrypts the
        protected model and ssl.cfg in memory --> serves

The failover run starts the bench through nginx (clients retry on UNAVAILABLE), SIGKILLs one replica
while the load runs, restarts it at once (it attests to the broker again), and measures from the
replicas' own Prometheus counters (scraped over mutual TLS every 0.25 s): failed requests against the
in-flight bound of the killed replica (its established connections at the moment of the kill: one
in-flight request per connection at most), the time until the total throughput is back, and the time
until the restarted replica serves again and full throughput is back after it is ready.

    python scripts/multi_replica.py [--replicas 3] [--duration 30] [--kill-at 10] [--cnum 8]
                                    [--json] [--plot failover.png] [--keep DIR]

Exit status 0 when the goals hold (failed requests <= in-flight bound; full throughput back within
5 s after the restarted replica is ready), 1 otherwise, 2 for a setup failure. Bounded in time: every
wait has a deadline, and children die with this process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
SERVER_NAME = "grpc.tf-serving.service.com"
MODEL = "digits"
METRICS_PATH = "/monitoring/prometheus/metrics"
_REQ = re.compile(r'^:tensorflow:serving:request_count\{[^}]*status="OK"[^}]*\}\s+([0-9.eE+]+)', re.M)


class SetupError(RuntimeError):
    """The topology could not be started (a missing binary, a process that died, a port not ready)."""


# --- processes ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Child side of Popen: get SIGKILL when this script dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    generation: int = 0

    def start(self, env: dict[str, str] | None = None) -> None:
        self.generation += 1
        fh = open(self.log, "ab")
        fh.write(f"\n=== start #{self.generation}: {' '.join(self.argv)}\n".encode())
        fh.flush()
        self.popen = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      preexec_fn=_die_with_parent, env=env)
        fh.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.kill()  # SIGKILL
            self.popen.wait(5)

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# --- material -------------------------------------------------------------------------------------


def _onnx_model() -> bytes:
    """A small real model (8x8 "images" -> 10 scores through a 64x256x10 MLP), deterministic."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32) / 8, "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32) / 16, "W2")
    shape = numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "flat_shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W1"], ["h"]),
         helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("MatMul", ["hr", "W2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["scores"], axis=1)],
        MODEL,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        initializer=[w1, w2, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="multi_replica")
    model.ir_version = 8
    return model.SerializeToString()


@dataclass
class Material:
    """What the model owner prepares (all under ``root``): encrypted model and ssl.cfg, certificates,
    the simulation key, and a broker policy pinning the replicas' simulated measurement."""

    root: Path
    wrap_key: Path = field(init=False)
    model_dir: Path = field(init=False)
    ssl_cfg: Path = field(init=False)
    tls: Any = field(init=False)
    broker_tls: Any = field(init=False)
    sim_key: Path = field(init=False)
    sim_config: Path = field(init=False)
    policy: Path = field(init=False)
    monitoring: Path = field(init=False)

    def make(self) -> Material:
        from teeserve import pf, tlsmaterial
        from teeserve.attest import sim

        r = self.root
        self.wrap_key = r / "owner" / "wrap_key"
        self.wrap_key.parent.mkdir(parents=True)
        key = pf.new_wrap_key()
        pf.write_wrap_key(self.wrap_key, key)
        self.model_dir = r / "srv" / "models" / MODEL
        target = self.model_dir / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        target.write_bytes(pf.encrypt_bytes(_onnx_model(), key, os.fspath(target)))
        self.tls = tlsmaterial.make_tls_material(r / "owner" / "tls", server_cn=SERVER_NAME, client_cn="client",
                                                 server_dns=["localhost"], server_ips=["127.0.0.1"])
        self.ssl_cfg = r / "srv" / "tls" / "ssl.cfg"
        self.ssl_cfg.parent.mkdir(parents=True)
        self.ssl_cfg.write_bytes(pf.encrypt_bytes(self.tls.ssl_cfg.read_bytes(), key, os.fspath(self.ssl_cfg)))
        self.broker_tls = tlsmaterial.make_tls_material(r / "owner" / "broker-tls", server_cn="localhost")
        sim.init_key(r / "sim")
        self.sim_key = r / "sim" / "sim_attest_key.pem"
        # The replicas' SIMULATED measurement covers the teeserve code and this configuration.
        self.sim_config = r / "srv" / "server-config.txt"
        self.sim_config.write_text(f"model {MODEL} at {self.model_dir}; ssl.cfg at {self.ssl_cfg}\n")
        mr = sim.code_measurement(self.sim_config.read_bytes()).hex()
        self.policy = r / "owner" / "policy.toml"
        self.policy.write_text(
            "version = 1\n\n[simulation]\ntrusted_keys = [\"../sim/sim_attest_key.pub.pem\"]\n\n"
            "[secrets.default]\nfile = \"wrap_key\"\ntee = [\"sim\"]\nallow_simulation = true\n\n"
            f"[[secrets.default.sim]]\nmr_enclave = \"{mr}\"\n"
        )
        self.monitoring = r / "srv" / "monitoring.config"
        self.monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
        return self


# --- the topology ---------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    grpc_port: int
    rest_port: int
    proc: Proc


class Topology(contextlib.AbstractContextManager["Topology"]):
    """Broker + N replicas + nginx, started by :meth:`start`, all ended by :meth:`close`."""

    def __init__(self, root: Path, replicas: int = 3, *, startup_timeout: float = 120.0,
                 max_connection_age_ms: int = 2000) -> None:
        if not os.path.exists(NGINX) or not os.path.exists(STREAM_MODULE):
            raise SetupError(f"needs Debian's nginx with the stream module ({NGINX}, {STREAM_MODULE})")
        self.root = root
        self.n = replicas
        self.startup_timeout = startup_timeout
        self.max_connection_age_ms = max_connection_age_ms
        self.material = Material(root).make()
        self.broker_port = free_port()
        self.nginx_port = free_port()
        self.replicas: list[Replica] = []
        self.procs: list[Proc] = []
        self.broker: Proc | None = None
        self.nginx: Proc | None = None
        self._client_ctx = ssl.create_default_context(cafile=os.fspath(self.material.tls.ca_cert))
        self._client_ctx.check_hostname = False
        self._client_ctx.load_cert_chain(self.material.tls.client_cert, self.material.tls.client_key)

    # lifecycle
    def start(self) -> Topology:
        """Broker, then the replicas (each attests and loads before it is ready), then nginx."""
        m = self.material
        self.broker = self._proc("broker", [
            sys.executable, "-m", "teeserve", "broker", "--policy", os.fspath(m.policy),
            "--listen", f"127.0.0.1:{self.broker_port}", "--cert", os.fspath(m.broker_tls.server_cert),
            "--key", os.fspath(m.broker_tls.server_key), "--audit", os.fspath(self.root / "owner" / "audit.db"),
            "--rate", "50", "--burst", "50"])
        try:
            self.broker.start()
            self._wait(lambda: _tcp_open(self.broker_port), "broker", self.broker, 30)
            for i in range(self.n):
                r = Replica(i, free_port(), free_port(), self._proc(f"replica{i}", []))
                r.proc.argv = self._replica_argv(r)
                self.replicas.append(r)
                r.proc.start()
            for r in self.replicas:
                self.wait_ready(r)
            self.nginx = self._start_nginx([f"127.0.0.1:{r.grpc_port}" for r in self.replicas])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _proc(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.root / "logs" / f"{name}.log")
        p.log.parent.mkdir(parents=True, exist_ok=True)
        self.procs.append(p)
        return p

    def _replica_argv(self, r: Replica) -> list[str]:
        m = self.material
        return [
            sys.executable, "-m", "teeserve", "gramine", "provision", "--tee", "sim",
            "--sim-key", os.fspath(m.sim_key), "--sim-config", os.fspath(m.sim_config),
            "--mode", "in-process", "--broker", f"localhost:{self.broker_port}",
            "--broker-ca", os.fspath(m.broker_tls.ca_cert), "--retries", "20", "--",
            "serve", f"--model_name={MODEL}", f"--model_base_path={m.model_dir}",
            f"--port={r.grpc_port}", f"--rest_api_port={r.rest_port}", "--host=127.0.0.1",
            f"--ssl_config_file={m.ssl_cfg}", f"--monitoring_config_file={m.monitoring}",
            "--file_system_poll_wait_seconds=0", "--enable_model_warmup=false", "--drain-timeout=2",
            "--grpc_max_threads=4",
            f"--grpc_channel_arguments=grpc.max_connection_age_ms={self.max_connection_age_ms},"
            "grpc.max_connection_age_grace_ms=5000",
        ]

    def _start_nginx(self, upstreams: Sequence[str]) -> Proc:
        import jinja2

        prefix = self.root / "nginx"
        prefix.mkdir(exist_ok=True)
        tpl = jinja2.Template((REPO / "deploy" / "nginx" / "teeserve-stream.conf.j2").read_text(),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        conf = prefix / "nginx.conf"
        conf.write_text(tpl.render(module_path=STREAM_MODULE, prefix=os.fspath(prefix),
                                   listen=f"127.0.0.1:{self.nginx_port}", replicas=list(upstreams), workers=1))
        test = subprocess.run([NGINX, "-t", "-p", os.fspath(prefix), "-e", os.fspath(prefix / "error.log"),
                               "-c", os.fspath(conf)], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise SetupError(f"nginx -t refused {conf}: {test.stderr.strip()}")
        p = self._proc("nginx", [NGINX, "-p", os.fspath(prefix), "-e", os.fspath(prefix / "error.log"),
                                 "-c", os.fspath(conf), "-g", "daemon off;"])
        p.start()
        self._wait(lambda: _tcp_open(self.nginx_port), "nginx", p, 15)
        return p

    def _wait(self, ok: Any, what: str, proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            if not proc.alive():
                raise SetupError(f"{what} exited ({proc.popen.returncode if proc.popen else '?'}):\n{proc.tail()}")
            time.sleep(0.1)
        raise SetupError(f"{what} not ready within {timeout} s:\n{proc.tail()}")

    # replicas
    def ready(self, r: Replica) -> bool:
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", r.rest_port, timeout=2, context=self._client_ctx)
            conn.request("GET", "/v1/health/ready")
            status = conn.getresponse().status
            conn.close()
            return status == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False

    def wait_ready(self, r: Replica, timeout: float | None = None) -> float:
        start = time.monotonic()
        try:
            self._wait(lambda: self.ready(r), f"replica {r.index}", r.proc, timeout or self.startup_timeout)
        except SetupError as exc:
            denials = [ln for ln in (self.broker.tail(50) if self.broker else "").splitlines() if "DENIED" in ln]
            if denials:  # e.g. the teeserve code changed after the policy pinned its measurement
                raise SetupError(f"{exc}\nbroker: {denials[-1]}") from None
            raise
        return time.monotonic() - start

    def kill(self, r: Replica) -> None:
        r.proc.kill()

    def restart(self, r: Replica) -> None:
        r.proc.start()

    def established(self, port: int) -> int:
        """Established TCP connections whose local port is ``port`` (the server side of nginx's)."""
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        return count

    def bench_argv(self, *, cnum: int, duration: float, retries: int = 8, warmup: int = 2) -> list[str]:
        m = self.material
        return [sys.executable, "-m", "teeserve", "client", "bench", "-url", f"127.0.0.1:{self.nginx_port}",
                "-ca", os.fspath(m.tls.ca_cert), "-crt", os.fspath(m.tls.client_cert),
                "-key", os.fspath(m.tls.client_key), "--server-name", SERVER_NAME, "--model", MODEL,
                "--input-name", "images", "--shape", "8,8", "-cnum", str(cnum), "-loop", "0",
                "--duration", str(duration), "--retries", str(retries), "--timeout", "10",
                "--warmup", str(warmup), "--json", "--quiet"]

    def reconfigure_nginx(self, replicas: Sequence[Replica]) -> None:
        """Restart nginx with ``replicas`` as its upstreams (for the 1-vs-N comparison)."""
        if self.nginx is not None:
            self.nginx.stop()
            self.procs.remove(self.nginx)
        self.nginx = self._start_nginx([f"127.0.0.1:{r.grpc_port}" for r in replicas])


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- metrics --------------------------------------------------------------------------------------


class Scraper(threading.Thread):
    """Every ``interval`` s, each live replica's OK request count (its Prometheus endpoint, mutual TLS).

    ``samples`` holds (monotonic time, replica index, generation, count); counts restart at 0 when a
    replica restarts (a new generation).
    """

    def __init__(self, topo: Topology, interval: float = 0.25) -> None:
        super().__init__(name="scraper", daemon=True)
        self.topo = topo
        self.interval = interval
        self.samples: list[tuple[float, int, int, float]] = []
        self._stop_event = threading.Event()
        self._conns: dict[int, http.client.HTTPSConnection] = {}

    def _count(self, r: Replica) -> float | None:
        conn = self._conns.get(r.index)
        for _ in range(2):
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", r.rest_port, timeout=1,
                                                   context=self.topo._client_ctx)
                self._conns[r.index] = conn
            try:
                conn.request("GET", METRICS_PATH)
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    return None
                return sum(float(v) for v in _REQ.findall(body))
            except (OSError, ssl.SSLError, http.client.HTTPException):
                conn.close()
                conn = None
                self._conns.pop(r.index, None)
        return None

    def run(self) -> None:
        while not self._stop_event.is_set():
            t = time.monotonic()
            for r in self.topo.replicas:
                if r.proc.alive():
                    c = self._count(r)
                    if c is not None:
                        self.samples.append((time.monotonic(), r.index, r.proc.generation, c))
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        for c in self._conns.values():
            c.close()

    def completions(self) -> list[tuple[float, int, float]]:
        """(time, replica, requests completed since the previous sample of the same process)."""
        last: dict[tuple[int, int], float] = {}
        out = []
        for t, i, gen, c in self.samples:
            prev = last.get((i, gen))
            if prev is not None and c >= prev:
                out.append((t, i, c - prev))
            last[(i, gen)] = c
        return out


def rate(events: list[tuple[float, int, float]], start: float, end: float, replica: int | None = None) -> float:
    total = sum(n for t, i, n in events if start < t <= end and (replica is None or i == replica))
    return total / (end - start) if end > start else 0.0


# --- the runs -------------------------------------------------------------------------------------


def run_bench(topo: Topology, *, cnum: int, duration: float) -> tuple[subprocess.Popen[str], Path]:
    out = topo.root / "logs" / f"bench-{time.monotonic_ns()}.json"
    proc = subprocess.Popen(topo.bench_argv(cnum=cnum, duration=duration), stdout=open(out, "w"),
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
    return proc, out


def bench_result(proc: subprocess.Popen[str], out: Path, timeout: float) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise SetupError(f"bench did not finish within {timeout} s") from None
    text = out.read_text()
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SetupError(f"bench gave no JSON (exit {proc.returncode}):\n{text[-2000:]}")


def failover(topo: Topology, *, cnum: int, duration: float, kill_at: float, victim: int = 1,
             window: float = 1.0, recovered: float = 0.9) -> dict[str, Any]:
    """Bench through nginx; SIGKILL replica ``victim`` at ``kill_at`` s; restart it at once."""
    scraper = Scraper(topo)
    scraper.start()
    t0 = time.monotonic()
    bench, out = run_bench(topo, cnum=cnum, duration=duration)
    r = topo.replicas[victim]
    while time.monotonic() - t0 < kill_at:
        if bench.poll() is not None:
            raise SetupError(f"bench ended early:\n{out.read_text()[-2000:]}")
        time.sleep(0.05)
    in_flight_bound = topo.established(r.grpc_port)
    t_kill = time.monotonic()
    topo.kill(r)
    topo.restart(r)
    topo.wait_ready(r, timeout=max(30.0, duration))
    t_ready = time.monotonic()
    result = bench_result(bench, out, timeout=duration + 60)
    t_end = time.monotonic()
    scraper.stop()
    ev = scraper.completions()

    baseline = rate(ev, t_kill - 6.0, t_kill - 0.5)

    def first_time(since: float, cond: Any, step: float = 0.25) -> float | None:
        t = since
        while t + window <= t_end:
            if cond(t, t + window):
                return t + window - since
            t += step
        return None

    back_after_kill = first_time(t_kill, lambda a, b: rate(ev, a, b) >= recovered * baseline)
    back_after_ready = first_time(t_ready, lambda a, b: rate(ev, a, b) >= recovered * baseline)
    victim_serving = first_time(t_ready, lambda a, b: rate(ev, a, b, victim) > 0, step=0.1)
    tail_start = max(t_ready + 3.0, t_end - 5.0)
    shares = {i: rate(ev, tail_start, t_end, i) for i in range(topo.n)}
    errors = result.get("errors", {})
    failed = sum(errors.values())
    timeline = []
    t = t0
    while t < t_end:
        timeline.append({"t": round(t - t0, 2), "total": rate(ev, t, t + 0.5),
                         **{f"replica{i}": rate(ev, t, t + 0.5, i) for i in range(topo.n)}})
        t += 0.5
    return {
        "replicas": topo.n, "cnum": cnum, "duration_s": duration, "killed_replica": victim,
        "kill_at_s": round(t_kill - t0, 2), "restart_ready_after_s": round(t_ready - t_kill, 2),
        "requests_ok": result.get("requests"), "tps": result.get("tps"), "errors": errors,
        "failed_requests": failed, "in_flight_bound": in_flight_bound,
        "baseline_tps": round(baseline, 1),
        "throughput_back_after_kill_s": None if back_after_kill is None else round(back_after_kill, 2),
        "full_throughput_after_ready_s": None if back_after_ready is None else round(back_after_ready, 2),
        "restarted_replica_serving_after_ready_s": None if victim_serving is None else round(victim_serving, 2),
        "tail_tps_by_replica": {f"replica{i}": round(v, 1) for i, v in shares.items()},
        "latency_ms": result.get("latency_ms"),
        "goal_failed_le_in_flight": failed <= in_flight_bound,
        "goal_full_throughput_within_5s": back_after_ready is not None and back_after_ready <= 5.0,
        "timeline": timeline,
    }


def compare(topo: Topology, *, cnum: int, duration: float) -> dict[str, Any]:
    """Throughput through nginx with all replicas, then with one (same client, same run)."""
    out: dict[str, Any] = {}
    for label, members in (("all", topo.replicas), ("one", topo.replicas[:1])):
        topo.reconfigure_nginx(members)
        bench, path = run_bench(topo, cnum=cnum, duration=duration)
        res = bench_result(bench, path, timeout=duration + 60)
        out[label] = {"replicas": len(members), "tps": res["tps"], "requests": res["requests"],
                      "errors": res.get("errors", {}), "latency_ms": res.get("latency_ms")}
    topo.reconfigure_nginx(topo.replicas)
    out["ratio"] = out["all"]["tps"] / out["one"]["tps"] if out["one"]["tps"] else float("nan")
    return out


def start_topology(root: Path, replicas: int) -> Topology:
    return Topology(root, replicas).start()


def audit_summary(topo: Topology) -> str:
    r = subprocess.run([sys.executable, "-m", "teeserve", "broker", "audit", "--audit",
                        os.fspath(topo.root / "owner" / "audit.db"), "--verify"],
                       capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip()


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report["timeline"]
    ts = [p["t"] for p in tl]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(ts, [p["total"] for p in tl], label="total", linewidth=2, color="black")
    for i in range(report["replicas"]):
        ax.plot(ts, [p[f"replica{i}"] for p in tl], label=f"replica {i}", alpha=0.8)
    ax.axvline(report["kill_at_s"], color="red", linestyle="--", label="SIGKILL")
    ax.axvline(report["kill_at_s"] + report["restart_ready_after_s"], color="green", linestyle="--",
               label="restarted replica ready")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s (server counters, 0.5 s bins)")
    ax.set_title(f"{report['replicas']} replicas behind nginx, replica {report['killed_replica']} killed: "
                 f"{report['failed_requests']} failed / {report['in_flight_bound']} in-flight bound")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="bench duration in seconds")
    p.add_argument("--kill-at", type=float, default=10.0, help="SIGKILL one replica this many seconds in")
    p.add_argument("--cnum", type=int, default=8, help="concurrent client connections")
    p.add_argument("--compare", type=float, default=0.0, metavar="S",
                   help="also measure N replicas vs 1 replica, S seconds each")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="save throughput over time")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.replicas < 2 or not 0 < args.kill_at < args.duration - 5:
        p.error("need --replicas >= 2 and 0 < --kill-at < --duration - 5")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="teeserve-replicas-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with start_topology(root, args.replicas) as topo:
            print(f"topology up: broker 127.0.0.1:{topo.broker_port}, nginx 127.0.0.1:{topo.nginx_port} -> "
                  + ", ".join(f"replica{r.index} :{r.grpc_port}" for r in topo.replicas), file=sys.stderr)
            report = failover(topo, cnum=args.cnum, duration=args.duration, kill_at=args.kill_at)
            if args.compare:
                report["compare"] = compare(topo, cnum=args.cnum, duration=args.compare)
            report["audit"] = audit_summary(topo).splitlines()[-1:]
    except SetupError as exc:
        print(f"multi_replica: setup failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report))
    else:
        show = {k: v for k, v in report.items() if k != "timeline"}
        for k, v in show.items():
            print(f"{k}: {v}")
    ok = report["goal_failed_le_in_flight"] and report["goal_full_throughput_within_5s"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
