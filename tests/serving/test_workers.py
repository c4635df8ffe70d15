"""``teeserve serve --workers N``: one supervisor, N serving processes sharing the ports (SO_REUSEPORT).

Real processes on 127.0.0.1 (``python -m teeserve serve``, started by ``test_server.ServerProcess``), the
official ``tensorflow_serving.apis`` stubs and plain HTTP. Which worker answered is told apart through
the workers' own Prometheus multiprocess files (``counter_worker<N>.db`` in the private metrics
directory, one set per worker slot, read here one file at a time with prometheus-client's
``MultiProcessCollector``): each request counted there was counted by a process in that slot, so "every
worker answers" is checked, not assumed.
Every test opens a new connection per request (a gRPC channel with its own subchannel pool, a new
HTTP client), because the kernel spreads *connections*, not requests, over the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from teeserve._errors import UsageError
from teeserve.serving._flags import parse_serve_args, usable_cpus

# The real-process helpers of the single-process server tests (same folder).
from test_server import (ServerProcess, _slow_request, free_port, steps_for, write_slow_loading_model,
                         write_slow_model)

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
WORKER_STARTED = "worker {} started"


# --- helpers --------------------------------------------------------------------------------------


def fresh_channel(port: int) -> grpc.Channel:
    """A channel that opens its own TCP connection (gRPC shares subchannels between channels by default)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def digits_request(images: np.ndarray, name: str = "digits") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return req


def predict_fresh(port: int, images: np.ndarray, name: str = "digits") -> predict_pb2.PredictResponse:
    with fresh_channel(port) as ch:
        return prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(images, name),
                                                                             timeout=30)


def model_state_fresh(port: int, name: str) -> int:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    with fresh_channel(port) as ch:
        [mvs] = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(req, timeout=30).model_version_status
    return int(mvs.state)


def rest_predict_fresh(rest_port: int, images: np.ndarray) -> dict[str, Any]:
    with httpx.Client() as client:  # one client per request: a new connection each time
        r = client.post(f"http://127.0.0.1:{rest_port}/v1/models/digits:predict",
                        json={"instances": images.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def records(server: ServerProcess) -> list[dict[str, Any]]:
    """The JSON log lines (supervisor and workers write to the same stderr)."""
    out = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                pass
    return out


def worker_pids(recs: list[dict[str, Any]]) -> dict[int, int]:
    """index -> pid of the latest start of each worker (the supervisor's "worker N started" lines)."""
    pids: dict[int, int] = {}
    for rec in recs:
        if rec.get("logger") == "teeserve.serving.workers" and rec["message"] == WORKER_STARTED.format(rec.get("worker")):
            pids[int(rec["worker"])] = int(rec["pid"])
    return pids


def wait_for(check: Callable[[], Any], what: str, server: ServerProcess | None = None, timeout: float = 60) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail with the server log otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"server exited ({server.proc.returncode}) while waiting for {what}:\n{server.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{server.log()}" if server else ""))
        time.sleep(0.1)


def ready_indices(recs: list[dict[str, Any]]) -> set[int]:
    return {int(r["worker"]) for r in recs if r["message"] == "ready" and "worker" in r}


def restarted(s: ServerProcess, index: int, old_pid: int) -> int | None:
    """The pid of worker ``index`` once it runs under a pid other than ``old_pid`` and that process has
    logged "ready"; None before."""
    recs = records(s)
    pid = worker_pids(recs).get(index)
    if pid in (None, old_pid):
        return None
    started_at = max(i for i, r in enumerate(recs) if r["message"] == WORKER_STARTED.format(index))
    return pid if any(r["message"] == "ready" and r.get("worker") == index for r in recs[started_at:]) else None


def wait_restarted(s: ServerProcess, index: int, old_pid: int) -> int:
    return wait_for(lambda: restarted(s, index, old_pid), f"worker {index} restarted and ready", s, timeout=60)


def proc_identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time in clock ticks) of a live, non-zombie process; None when it is gone.
    The start time tells a reused pid from the original process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return pid, int(fields[19])


def children_of(ppid: int) -> set[tuple[int, int]]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == ppid and fields[0] not in ("Z", "X"):
            found.add((int(entry), int(fields[19])))
    return found


def still_running(procs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return {p for p in procs if proc_identity(p[0]) == p}


def per_worker_requests(metrics_dir: Path, model: str = "digits") -> dict[int, dict[str, float]]:
    """worker index -> {protocol: Predict requests of ``model``} as recorded in that slot's own counter
    file (every process that ran in the slot: a restarted worker counts on in its predecessor's file)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, dict[str, float]] = {}
    for f in sorted(metrics_dir.glob("counter_*.db")):
        slot = f.stem.split("_")[-1]
        assert slot.startswith("worker"), f"{f.name}: not named after a worker slot"
        index = int(slot.removeprefix("worker"))
        with tempfile.TemporaryDirectory() as one:
            shutil.copy(f, one)  # this file alone: the collector then reports this process only
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=one)
            counts: dict[str, float] = {}
            for family in registry.collect():
                for s in family.samples:
                    if (s.name == "teeserve_requests_total" and s.labels.get("model_name") == model
                            and s.labels.get("api") == "Predict"):
                        counts[s.labels["protocol"]] = counts.get(s.labels["protocol"], 0.0) + s.value
        out[index] = counts
    return out


def scrape(rest_port: int, path: str = "/metrics") -> dict[str, float]:
    """One scrape on a new connection: Predict totals for "digits" in TF's and teeserve's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client() as client:
        text = client.get(f"http://127.0.0.1:{rest_port}{path}", timeout=30).text
    tf_count = ts_count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == ":tensorflow:serving:request_count" and s.labels.get("model_name") == "digits":
                tf_count += s.value
            elif (s.name == "teeserve_requests_total" and s.labels.get("model_name") == "digits"
                  and s.labels.get("api") == "Predict"):
                ts_count += s.value
    return {"tf": tf_count, "teeserve": ts_count}


@pytest.fixture()
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own, inherited by the server: its private metrics directory lands there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    return d


def metrics_dirs(tmpdir: Path) -> list[Path]:
    return sorted(tmpdir.glob("teeserve-metrics-*"))


@pytest.fixture()
def start(tmp_path: Path, tmpdir_env: Path) -> Iterator[Callable[..., ServerProcess]]:
    """start(*serve_args, workers=2, rest=True) -> a server whose every worker is up and ready."""
    started: list[ServerProcess] = []

    def go(*args: str, workers: int = 2, rest: bool = True) -> ServerProcess:
        s = ServerProcess(tmp_path, f"--workers={workers}", "--log-format=json", *args, rest=rest, wait_ready=False)
        started.append(s)  # stopped at teardown even when it never gets ready
        s.wait_ready()
        wait_for(lambda: any(r["message"] == f"all {workers} workers up" for r in records(s)), "all workers up", s)
        wait_for(lambda: ready_indices(records(s)) == set(range(1, workers + 1)), "every worker ready", s)
        return s

    yield go
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow-workers") / "slow"
    write_slow_model(base / "1")
    return base


@pytest.fixture()
def monitoring_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "monitoring.config"
    cfg.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    return cfg


def images_for(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((2, 8, 8), dtype=np.float32)


# --- 1. two workers serve, and both of them answer ------------------------------------------------


def test_two_workers_serve_grpc_and_rest_and_both_answer(start: Callable[..., ServerProcess], onnx_model_dir: Path,
                                                         tmpdir_env: Path, digits_reference: Any) -> None:
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}")
    recs = records(s)
    pids = worker_pids(recs)
    assert sorted(pids) == [1, 2] and len(set(pids.values())) == 2, pids
    assert s.proc.pid not in pids.values()  # the workers are processes of their own
    assert ready_indices(recs) == {1, 2}
    for pid in pids.values():  # without --worker-cpu-affinity the kernel may move them anywhere
        assert set(thread_cpus(pid).values()) == {frozenset(os.sched_getaffinity(0))}

    n_grpc, n_rest = 30, 20
    for i in range(n_grpc):
        images = images_for(i)
        resp = predict_fresh(s.port, images)
        want = digits_reference(images)
        np.testing.assert_allclose(tf.make_ndarray(resp.outputs["probabilities"]), want["probabilities"], rtol=1e-5,
                                   atol=1e-6)
        assert tf.make_ndarray(resp.outputs["classes"]).tolist() == want["classes"].tolist()
        assert (resp.model_spec.name, resp.model_spec.version.value) == ("digits", 1)
    for i in range(n_rest):
        images = images_for(100 + i)
        got = rest_predict_fresh(s.rest_port, images)["predictions"]
        want = digits_reference(images)
        assert [p["classes"] for p in got] == want["classes"].tolist()
        np.testing.assert_allclose([p["probabilities"] for p in got], want["probabilities"], rtol=1e-5, atol=1e-6)

    [mdir] = metrics_dirs(tmpdir_env)

    def all_counted() -> dict[int, dict[str, float]] | None:
        c = per_worker_requests(mdir)
        totals = [sum(v.get(protocol, 0) for v in c.values()) for protocol in ("GRPC", "REST")]
        return c if totals == [n_grpc, n_rest] else None

    counts = wait_for(all_counted, "every request counted in the workers' own files", s, timeout=10)
    # Each worker answered part of the requests on both protocols, and nothing else counted any.
    assert set(counts) == set(pids), (counts, pids)
    for by_protocol in counts.values():
        assert by_protocol.get("GRPC", 0) > 0 and by_protocol.get("REST", 0) > 0, counts


# --- 2. metrics are merged across the workers -----------------------------------------------------


def test_metrics_are_merged_across_workers_and_removed_at_exit(start: Callable[..., ServerProcess],
                                                               onnx_model_dir: Path, tmpdir_env: Path,
                                                               monitoring_config: Path) -> None:
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}",
              f"--monitoring_config_file={monitoring_config}")
    [mdir] = metrics_dirs(tmpdir_env)
    assert mdir.stat().st_mode & 0o777 == 0o700
    assert {0} == set(scrape(s.rest_port).values())
    n_grpc, n_rest = 24, 16
    for i in range(n_grpc):
        predict_fresh(s.port, images_for(i))
    for i in range(n_rest):
        rest_predict_fresh(s.rest_port, images_for(i))
    sent = n_grpc + n_rest
    # Both workers served (else "merged" would prove nothing; their files get the numbers within
    # _metrics.FLUSH_S) ...
    def both_counted() -> dict[int, dict[str, float]] | None:
        c = per_worker_requests(mdir)
        return c if len(c) == 2 and all(sum(v.values()) > 0 for v in c.values()) else None

    wait_for(both_counted, "requests counted in both workers' files", s, timeout=10)
    # ... and every scrape, on a new connection (so answered by either worker), shows all of it.
    wait_for(lambda: scrape(s.rest_port) == {"tf": sent, "teeserve": sent}, "the merged totals", s, timeout=10)
    for _ in range(12):
        assert scrape(s.rest_port) == {"tf": sent, "teeserve": sent}
    assert s.stop() == 0
    assert metrics_dirs(tmpdir_env) == [], "the metrics directory outlived the server"


def test_a_restarted_worker_counts_on_in_its_slot_files(start: Callable[..., ServerProcess], onnx_model_dir: Path,
                                                        tmpdir_env: Path, monitoring_config: Path) -> None:
    """A killed worker's successor takes over the slot's metrics files: the merged totals keep every
    request, and a restart leaves no extra set of files behind (a worker crashing in a loop would
    otherwise grow the directory without bound, and every scrape reads every file)."""
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}",
              f"--monitoring_config_file={monitoring_config}")
    [mdir] = metrics_dirs(tmpdir_env)
    for i in range(20):
        predict_fresh(s.port, images_for(i))

    def all_in_files() -> dict[int, dict[str, float]] | None:
        c = per_worker_requests(mdir)
        return c if sum(v.get("GRPC", 0) for v in c.values()) == 20 and c.get(2, {}).get("GRPC", 0) > 0 else None

    before = wait_for(all_in_files, "both workers' answers in their files", s, timeout=10)[2]["GRPC"]
    files = sorted(f.name for f in mdir.iterdir())
    assert files and all(re.fullmatch(r"(counter|histogram|gauge_sum)_worker[12]\.db", f) for f in files), files

    wait_restarted(s, 2, kill_worker(s, 2))
    for i in range(20):
        predict_fresh(s.port, images_for(20 + i))
    # The successor counted on from its predecessor's total (a fresh file would start again at 0) ...
    wait_for(lambda: per_worker_requests(mdir).get(2, {}).get("GRPC", 0) > before,
             "the restarted worker counting on in its slot's file", s, timeout=10)
    wait_for(lambda: scrape(s.rest_port) == {"tf": 40, "teeserve": 40}, "the merged totals", s, timeout=10)
    # ... in the same files: none was added for the new process.
    assert sorted(f.name for f in mdir.iterdir()) == files
    assert s.stop() == 0


# --- 3. SIGTERM: every worker drains, exit 0, nothing left ----------------------------------------


def test_sigterm_drains_every_worker_and_leaves_no_process(start: Callable[..., ServerProcess], slow_model_dir: Path,
                                                           tmpdir_env: Path) -> None:
    s = start("--model_name=slow", f"--model_base_path={slow_model_dir}", "--drain-timeout=30", rest=False)
    spawned = children_of(s.proc.pid)  # the workers (and multiprocessing's helper, if any)
    pids = worker_pids(records(s))
    assert {pid for pid, _ in spawned} >= set(pids.values()), (spawned, pids)

    n = steps_for(1.5, slow_model_dir)
    outcome: dict[int, Any] = {}

    def call(i: int, steps: int) -> None:
        try:
            with fresh_channel(s.port) as ch:
                resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(_slow_request(steps), timeout=120)
            outcome[i] = (tf.make_ndarray(resp.outputs["y"]).tolist(), time.monotonic(), time.time())
        except grpc.RpcError as exc:  # reported by the assertions below
            outcome[i] = (exc.code(), exc.details())

    for _attempt in range(4):  # the machine may be faster than calibrated: make sure they are in flight
        outcome.clear()
        threads = [threading.Thread(target=call, args=(i, n)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        if all(t.is_alive() for t in threads):
            break
        for t in threads:
            t.join(120)
        n *= 4
    else:
        raise AssertionError("could not get the requests to stay in flight")
    signal_at = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert s.proc.wait(60) == 0, s.log()
    for i in range(4):  # each in-flight request finished, with the full computation, after the signal
        assert outcome[i][0] == [float(n)], outcome[i]
        assert outcome[i][1] > signal_at
    recs = records(s)
    for index in (1, 2):
        mine = [r for r in recs if r.get("worker") == index and r["logger"] != "teeserve.serving.workers"]
        drains = [r for r in mine if r["message"].startswith("SIGTERM received: draining")]
        assert len(drains) == 1, (index, mine)
        # The supervisor passed the signal on at once: the worker began draining while work was in flight.
        assert datetime.fromisoformat(drains[0]["time"]).timestamp() < min(o[2] for o in outcome.values())
        mine = [r["message"] for r in mine]
        assert mine[-1] == "stopped", (index, mine)
    supervisor = [r["message"] for r in recs if r["logger"] == "teeserve.serving.workers"]
    assert supervisor[-1] == "stopped", supervisor
    assert not any("did not" in m for m in supervisor), supervisor
    # Nothing the supervisor started outlives it (a helper may take a moment to notice: poll).
    wait_for(lambda: not still_running(spawned), f"no process left of {spawned}", timeout=10)
    assert metrics_dirs(tmpdir_env) == []


# --- 4. a worker killed after it was up is restarted ----------------------------------------------


def kill_worker(s: ServerProcess, index: int) -> int:
    """SIGKILL worker ``index`` and wait until the supervisor has reaped it (so that every thread of it,
    and its listening sockets, are gone: connections already queued on a process that is killed are
    lost with it, no server can help that); returns its pid."""
    def exits() -> int:
        return sum(r["message"].startswith(f"worker {index} exited unexpectedly") for r in records(s))

    before = exits()
    pid = worker_pids(records(s))[index]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: exits() > before, f"the supervisor to notice worker {index} died", s, timeout=30)
    return pid

def test_killed_worker_is_restarted_and_the_server_keeps_answering(start: Callable[..., ServerProcess],
                                                                   onnx_model_dir: Path, tmpdir_env: Path) -> None:
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", rest=False)
    before = worker_pids(records(s))
    victim = kill_worker(s, 1)
    # Before the restart (1 s back-off), new connections all go to the worker still listening.
    answered_meanwhile = 0
    while worker_pids(records(s))[1] == victim:
        predict_fresh(s.port, images_for(answered_meanwhile))  # raises on any failure
        answered_meanwhile += 1
    assert answered_meanwhile > 0

    new_pid = wait_restarted(s, 1, victim)
    recs = records(s)
    exits = [r for r in recs if r["message"].startswith("worker 1 exited unexpectedly")]
    assert len(exits) == 1 and exits[0]["exit_status"] == -signal.SIGKILL and "restarting it in" in exits[0]["message"]
    assert worker_pids(recs) == {1: new_pid, 2: before[2]}

    [mdir] = metrics_dirs(tmpdir_env)
    for i in range(30):
        predict_fresh(s.port, images_for(i))  # raises on any failure
    # Worker 1 had answered nothing before it was killed: what its slot counts now, its successor did.
    wait_for(lambda: per_worker_requests(mdir).get(1, {}).get("GRPC", 0) > 0,
             "the restarted worker's answers in its metrics file", s, timeout=10)
    assert s.stop() == 0  # a restart is not an unclean exit


def test_no_request_fails_while_a_worker_restarts(start: Callable[..., ServerProcess], onnx_model_dir: Path) -> None:
    """New connections reach a restarting worker as soon as it listens: it must not listen before it
    can serve (else: NOT_FOUND "Servable not found" for every connection it gets until its models load)."""
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", rest=False)
    victim = kill_worker(s, 1)
    failures: list[tuple[float, str, str]] = []
    sent = 0
    t0 = time.monotonic()
    ready_at: float | None = None
    while ready_at is None or time.monotonic() < ready_at + 0.5:  # through the restart, without pause
        try:
            predict_fresh(s.port, images_for(sent))
        except grpc.RpcError as exc:
            failures.append((round(time.monotonic() - t0, 3), exc.code().name, exc.details()))
        sent += 1
        if ready_at is None and sent % 5 == 0 and restarted(s, 1, victim):
            ready_at = time.monotonic()
        assert time.monotonic() - t0 < 60, "worker 1 was not restarted:\n" + s.log()
    assert failures == [], f"{len(failures)} of {sent} requests failed during the restart, e.g. {failures[:3]}"


# --- 5. HandleReloadConfigRequest reaches every worker --------------------------------------------


def _reload_adding(port: int, base_path: Path, names: tuple[str, ...] = ("digits", "b")) -> None:
    reload = model_management_pb2.ReloadConfigRequest()
    for name in names:
        c = reload.config.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = name, str(base_path), "onnx"
    with fresh_channel(port) as ch:
        resp = model_service_pb2_grpc.ModelServiceStub(ch).HandleReloadConfigRequest(reload, timeout=60)
    assert resp.status.error_code == 0


def _relayed(s: ServerProcess, workers: int = 2) -> bool:
    """Every worker has applied the relayed reload. The supervisor sends it to all of them, the one
    that received the request too, so one such line alone may be that worker's (a no-op) while the
    other is still loading the new model."""
    done = [r for r in records(s) if r["message"] == "model config reloaded (relayed from another worker)"]
    return len(done) >= workers


def test_reload_config_sent_to_one_worker_is_applied_by_all(start: Callable[..., ServerProcess],
                                                            onnx_model_dir: Path, tmpdir_env: Path) -> None:
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", rest=False)
    with pytest.raises(grpc.RpcError) as err:  # not there yet
        model_state_fresh(s.port, "b")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    _reload_adding(s.port, onnx_model_dir)
    # As with TF Serving, the call returns once "b" is there: on whichever worker a new connection
    # reaches (the other worker loads it only after the one that got the call has), and still "digits".
    for i in range(30):
        assert model_state_fresh(s.port, "b") == AVAILABLE
        assert predict_fresh(s.port, images_for(i), "b").model_spec.name == "b"
        predict_fresh(s.port, images_for(i), "digits")
    pids = worker_pids(records(s))

    def both_answered_b() -> dict[int, dict[str, float]] | None:
        # Workers write their counters to the shared files every FLUSH_S (0.25 s): on a fast machine
        # the loop above can end before the last of its answers reached them, so wait for the write.
        counts = per_worker_requests(metrics_dirs(tmpdir_env)[0], model="b")
        ok = set(counts) == set(pids) and all(v.get("GRPC", 0) > 0 for v in counts.values())
        return counts if ok else None

    wait_for(both_answered_b, "both workers' answers for model b in their metrics files", s, timeout=10)


def test_reloaded_config_survives_a_worker_restart(start: Callable[..., ServerProcess], onnx_model_dir: Path,
                                                   tmpdir_env: Path) -> None:
    """A worker restarted after a HandleReloadConfigRequest must serve the reloaded config too, or the
    workers disagree for good (a client sees model "b" on some connections and NOT_FOUND on others)."""
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", rest=False)
    _reload_adding(s.port, onnx_model_dir)
    assert _relayed(s), "HandleReloadConfigRequest returned before every worker had applied it"
    victim = kill_worker(s, 1)
    wait_restarted(s, 1, victim)
    failures = []
    for i in range(30):
        try:
            predict_fresh(s.port, images_for(i), "b")
        except grpc.RpcError as exc:
            failures.append((exc.code(), exc.details()))
    assert failures == [], f"{len(failures)}/30 requests for the reloaded model failed after a restart: {failures[:2]}"


# --- 6. start failures ----------------------------------------------------------------------------


def _worker_pids_in(stderr: str) -> list[int]:
    import re

    return [int(m) for m in re.findall(r"worker \d+ started worker=\d+ pid=(\d+)", stderr)]


@pytest.mark.parametrize("setup", ["bad_ssl", "missing_ssl"])
def test_bad_ssl_config_stops_every_worker_with_one_clear_error(tmp_path: Path, onnx_model_dir: Path,
                                                                setup: str) -> None:
    ssl_cfg = tmp_path / "ssl.cfg"
    if setup == "bad_ssl":
        ssl_cfg.write_text('server_key: "not a key"\nserver_cert: "x"\n')
    out = subprocess.run(
        [sys.executable, "-m", "teeserve", "serve", "--workers=2", "--host=127.0.0.1", f"--port={free_port()}",
         f"--rest_api_port={free_port()}", "--model_name=digits", f"--model_base_path={onnx_model_dir}",
         f"--ssl_config_file={ssl_cfg}"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode not in (0, None), out.stderr
    errors = [line for line in out.stderr.splitlines() if "teeserve: error:" in line]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("teeserve: error:") and "ssl" in errors[0].lower(), errors
    assert out.stderr.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    pids = _worker_pids_in(out.stderr)
    assert len(pids) == 2, out.stderr  # the workers did start (the TLS material is theirs to load) ...
    assert [p for p in pids if proc_identity(p) is not None] == []  # ... and none is left


@pytest.mark.parametrize("blocker", ["listener", "grpc_server", "rest_listener"])
def test_port_in_use_fails_before_any_worker_starts(tmp_path: Path, onnx_model_dir: Path, blocker: str) -> None:
    """Another listener on the port: a clear error naming it, no worker started. "grpc_server" is a
    gRPC server with gRPC's default options (SO_REUSEPORT on, as tensorflow_model_server's), which the
    workers' SO_REUSEPORT must not silently join."""
    grpc_port, rest_port = free_port(), free_port()
    holder: Any = None
    if blocker == "grpc_server":
        holder = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        grpc_port = holder.add_insecure_port("127.0.0.1:0")
        holder.start()
    else:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        if blocker == "listener":
            grpc_port = holder.getsockname()[1]
        else:
            rest_port = holder.getsockname()[1]
    while rest_port == grpc_port:  # free_port() ran before the holder took a port of its own
        rest_port = free_port()
    what, port = ("REST", rest_port) if blocker == "rest_listener" else ("gRPC", grpc_port)
    log_path = tmp_path / "stderr.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "teeserve", "serve", "--workers=2", "--host=127.0.0.1", f"--port={grpc_port}",
                 f"--rest_api_port={rest_port}", "--model_name=digits", f"--model_base_path={onnx_model_dir}"],
                stdout=subprocess.DEVNULL, stderr=log)
        try:
            # Either it exits, or it got past the port check (then stop it: that is the failure).
            wait_for(lambda: proc.poll() is not None or "starting 2 workers" in log_path.read_text(),
                     "the server to exit", timeout=60)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    finally:
        if blocker == "grpc_server":
            holder.stop(None)
        else:
            holder.close()
    stderr = log_path.read_text()
    assert "starting 2 workers" not in stderr and "worker 1 started" not in stderr, \
        f"the server started its workers on a port another process listens on:\n{stderr}"
    assert proc.returncode not in (0, None)
    assert stderr.strip().splitlines()[-1].startswith(f"teeserve: error: cannot listen for {what} on 127.0.0.1:{port}")
    assert "Traceback" not in stderr


def thread_cpus(pid: int) -> dict[int, frozenset[int]]:
    """tid -> the CPUs it may run on, for every thread of process ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
    return out


def test_worker_cpu_affinity_auto_pins_every_thread_of_each_worker_to_its_cpu(
        start: Callable[..., ServerProcess], onnx_model_dir: Path) -> None:
    from teeserve.serving._workers import slot_cpus

    mask = os.sched_getaffinity(0)  # the supervisor's, inherited from this test
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", "--worker-cpu-affinity=auto",
              rest=False)
    for i in range(4):
        predict_fresh(s.port, images_for(i))  # raises on any failure
    pids = worker_pids(records(s))
    if len(mask) >= 2:  # (on one CPU every slot is the whole mask: nothing to tell apart)
        assert slot_cpus(1, 2, mask) != slot_cpus(2, 2, mask) and len(slot_cpus(1, 2, mask)) < len(mask)
    for index, pid in pids.items():
        want = frozenset(slot_cpus(index, 2, mask))
        cpus = thread_cpus(pid)
        assert len(cpus) > 3, cpus  # gRPC's and the loop's threads were started after the pinning
        assert set(cpus.values()) == {want}, (index, cpus)
        shown = ",".join(str(c) for c in sorted(want))
        assert any(r["message"] == f"worker {index} pinned to CPU {shown}" for r in records(s))
    # A restarted worker takes its slot's CPUs again.
    victim = kill_worker(s, 2)
    new_pid = wait_restarted(s, 2, victim)
    wait_for(lambda: ready_indices(records(s)) >= {2} and len(thread_cpus(new_pid)) > 3, "worker 2 back", s)
    assert set(thread_cpus(new_pid).values()) == {frozenset(slot_cpus(2, 2, mask))}
    predict_fresh(s.port, images_for(9))


def test_worker_cpu_affinity_warns_when_intra_op_threads_outnumber_a_workers_cpus(
        start: Callable[..., ServerProcess], onnx_model_dir: Path) -> None:
    from teeserve.serving._workers import slot_cpus

    mask = os.sched_getaffinity(0)
    share = min(len(slot_cpus(i, 2, mask)) for i in (1, 2))
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", "--worker-cpu-affinity=auto",
              f"--tensorflow_intra_op_parallelism={share + 1}", rest=False)
    predict_fresh(s.port, images_for(0))  # raises on any failure
    assert any(r["message"] == f"--tensorflow_intra_op_parallelism={share + 1} is more than the {share} CPU(s) "
               "a pinned worker has (--worker-cpu-affinity auto): its intra-op threads will share them"
               for r in records(s))
    assert not any("is more than the" in r["message"] for r in records(
        start("--model_name=digits", f"--model_base_path={onnx_model_dir}", "--worker-cpu-affinity=auto",
              f"--tensorflow_intra_op_parallelism={share}", rest=False)))


def test_worker_cpu_affinity_with_one_process_warns_and_pins_nothing(tmp_path: Path, onnx_model_dir: Path) -> None:
    # (one intra-op thread: with 0, ONNX Runtime pins the threads of its own pool, one per core)
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={onnx_model_dir}",
                      "--tensorflow_intra_op_parallelism=1", "--worker-cpu-affinity=auto", rest=False)
    try:
        predict_fresh(s.port, images_for(0))  # raises on any failure
        assert "--worker-cpu-affinity=auto has no effect with one serving process" in s.log()
        assert set(thread_cpus(s.proc.pid).values()) == {frozenset(os.sched_getaffinity(0))}
    finally:
        assert s.stop() == 0


def connections_by_worker(port: int, pids: dict[int, int]) -> dict[int, int]:
    """worker index -> established TCP connections on local ``port`` that its process holds (/proc),
    counted by the peer benchmark's own helper (the split it prints for every round)."""
    benchmarks = str(Path(__file__).resolve().parents[2] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    from bench_peers import connections_by_pid

    by_pid = connections_by_pid(port, list(pids.values()))
    return {index: by_pid.get(pid, 0) for index, pid in pids.items()}


def test_worker_connection_balance_round_robin_splits_connections_evenly(
        start: Callable[..., ServerProcess], onnx_model_dir: Path) -> None:
    """16 gRPC channels and 16 keep-alive HTTP connections, opened one after the other: 8 on each
    worker, for both ports, where the kernel's hash gives 8+8 about one time in five. After a worker
    is killed and comes back, new connections are dealt in turn again."""
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", "--worker-connection-balance=round-robin")
    pids = worker_pids(records(s))
    channels = [fresh_channel(s.port) for _ in range(16)]
    clients = [httpx.Client() for _ in range(16)]
    try:
        for i, ch in enumerate(channels):  # one at a time: each channel connects on its first call
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(images_for(i)), timeout=30)
        for client in clients:
            assert client.get(f"http://127.0.0.1:{s.rest_port}/v1/models/digits", timeout=30).status_code == 200
        assert connections_by_worker(s.port, pids) == {1: 8, 2: 8}
        assert connections_by_worker(s.rest_port, pids) == {1: 8, 2: 8}
    finally:
        for ch in channels:
            ch.close()
        for client in clients:
            client.close()
    # A restarted worker joins the group again and attaches a fresh program: in turn from then on.
    victim = kill_worker(s, 1)
    new_pid = wait_restarted(s, 1, victim)
    pids = {1: new_pid, 2: pids[2]}
    channels = [fresh_channel(s.port) for _ in range(6)]
    try:
        for i, ch in enumerate(channels):
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(digits_request(images_for(i)), timeout=30)
        assert connections_by_worker(s.port, pids) == {1: 3, 2: 3}
    finally:
        for ch in channels:
            ch.close()
    assert "refused" not in s.log()


def test_worker_connection_balance_refused_by_the_kernel_stops_the_start(tmp_path: Path, onnx_model_dir: Path) -> None:
    """Without CAP_BPF (dropped by setpriv, as a server started without it) round-robin cannot be had:
    the server says so and exits 1 before any worker starts, rather than dealing by hash unasked."""
    if Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text().strip() == "0":
        pytest.skip("this host lets any process load eBPF socket filters: the refusal cannot be provoked")
    grpc_port, rest_port = free_port(), free_port()
    # (not root: there is no CAP_BPF to drop, and setpriv could not drop it without CAP_SETPCAP)
    drop = ["setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin", "--"] if os.geteuid() == 0 else []
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "teeserve", "serve", "--workers=2", "--host=127.0.0.1", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--model_name=digits", f"--model_base_path={onnx_model_dir}",
         "--worker-connection-balance=round-robin"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "teeserve: error: --worker-connection-balance round-robin: the kernel refused its eBPF program "
        "(Operation not permitted); it needs CAP_BPF (or root), and a seccomp profile that allows bpf(). "
        "Use --worker-connection-balance hash (the default) here")
    assert "worker 1 started" not in proc.stderr and "Traceback" not in proc.stderr


def test_worker_connection_balance_with_one_process_warns(tmp_path: Path, onnx_model_dir: Path) -> None:
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={onnx_model_dir}",
                      "--worker-connection-balance=round-robin", rest=False)
    try:
        predict_fresh(s.port, images_for(0))  # raises on any failure
        assert "--worker-connection-balance=round-robin has no effect with one serving process" in s.log()
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize(("workers", "cpus", "want"), [
    (2, [0, 1], [{0}, {1}]),
    (2, [0, 1, 2, 3, 4], [{0, 1, 2}, {3, 4}]),
    (3, [0, 1, 2, 3], [{0, 1}, {2}, {3}]),
    (3, [4, 7], [{4}, {7}, {4}]),  # more workers than CPUs: round robin, the mask's own CPU numbers
    (4, [3, 2, 1, 0], [{0}, {1}, {2}, {3}]),
])
def test_slot_cpus_split_the_mask(workers: int, cpus: list[int], want: list[set[int]]) -> None:
    from teeserve.serving._workers import slot_cpus

    assert [slot_cpus(i, workers, cpus) for i in range(1, workers + 1)] == want


@pytest.mark.parametrize(("flag", "field", "default", "value", "bad"), [
    ("--worker-cpu-affinity", "worker_cpu_affinity", "none", "auto", "0-1"),
    ("--worker-connection-balance", "worker_connection_balance", "hash", "round-robin", "least-connections"),
])
def test_worker_capacity_option_values(flag: str, field: str, default: str, value: str, bad: str) -> None:
    """Each defaults as documented, takes its value, is left out of the measurement (a capacity
    option), and refuses anything else."""
    assert getattr(parse_serve_args(BASE), field) == default
    o = parse_serve_args([*BASE, "--workers", "2", flag, value])
    assert getattr(o, field) == value
    assert o.measured_config() == parse_serve_args([*BASE, "--workers", "2"]).measured_config()
    with pytest.raises(SystemExit):
        parse_serve_args([*BASE, flag, bad])


# --- 7. the --workers flag (in-process) -----------------------------------------------------------

BASE = ["--model_name=digits", "--model_base_path=/m", "--port=8500"]


@pytest.mark.parametrize("value", ["0", "abc", "300", "257", "-1", ""])
def test_bad_workers_values_are_usage_errors(value: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_serve_args([*BASE, "--workers", value])
    assert "--workers" in str(err.value)
    assert err.value.exit_code == 2


def test_workers_values() -> None:
    assert parse_serve_args(BASE).workers == 1
    assert parse_serve_args([*BASE, "--workers", "3"]).workers == 3
    assert parse_serve_args([*BASE, "--workers=256"]).workers == 256
    assert parse_serve_args([*BASE, "--workers", "auto"]).workers == usable_cpus()
    assert parse_serve_args([*BASE, "--workers", " AUTO "]).workers == usable_cpus()


def test_usable_cpus_follows_the_affinity_mask() -> None:
    mask = os.sched_getaffinity(0)
    assert usable_cpus() == len(mask)
    one = min(mask)
    os.sched_setaffinity(0, {one})  # this thread only; restored below
    try:
        assert usable_cpus() == 1
        assert parse_serve_args([*BASE, "--workers", "auto"]).workers == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_workers_refuse_a_unix_socket() -> None:
    assert parse_serve_args([*BASE, "--grpc_socket_path=/tmp/s.sock"]).grpc_socket_path == "/tmp/s.sock"
    with pytest.raises(UsageError) as err:
        parse_serve_args([*BASE, "--workers", "2", "--grpc_socket_path=/tmp/s.sock"])
    assert "--grpc_socket_path" in str(err.value) and "--workers" in str(err.value)


def test_workers_are_not_measured() -> None:
    from teeserve.serving._server import measurement

    one = parse_serve_args([*BASE, "--workers", "1"])
    two = parse_serve_args([*BASE, "--workers", "2"])
    assert (one.workers, two.workers) == (1, 2)
    assert one.measured_config() == two.measured_config()
    assert measurement(one) == measurement(two)
    # ... while a flag that changes behaviour does change it (the comparison above means something).
    assert parse_serve_args([*BASE[:-1], "--port=8600"]).measured_config() != one.measured_config()


# --- 8. encrypted model: the keys reach the workers over the pipe ---------------------------------


def test_encrypted_model_with_wrap_key_is_served_by_every_worker(
        start: Callable[..., ServerProcess], tmp_path: Path, encrypted_onnx_model_dir: Path, wrap_key: bytes,
        tmpdir_env: Path, digits_reference: Any) -> None:
    from teeserve import pf

    key_file = tmp_path / "wrap_key"
    pf.write_wrap_key(key_file, wrap_key)
    s = start("--model_name=digits", f"--model_base_path={encrypted_onnx_model_dir}", "--require-encrypted",
              "--wrap-key", str(key_file), rest=False)
    pids = worker_pids(records(s))
    for pid in pids.values():  # never on the command line or in the environment of a worker
        for part in ("cmdline", "environ"):
            blob = Path(f"/proc/{pid}/{part}").read_bytes()
            assert wrap_key not in blob and wrap_key.hex().encode() not in blob.lower(), part
    assert sum(r["message"] == "wrap key loaded" for r in records(s)) == 1  # once, by the supervisor

    for i in range(20):
        images = images_for(i)
        resp = predict_fresh(s.port, images)
        assert tf.make_ndarray(resp.outputs["classes"]).tolist() == digits_reference(images)["classes"].tolist()
    [mdir] = metrics_dirs(tmpdir_env)
    def every_worker_counted() -> dict[int, dict[str, float]] | None:
        c = per_worker_requests(mdir)
        every = set(c) == set(pids) and all(v.get("GRPC", 0) > 0 for v in c.values())
        return c if every and sum(v.get("GRPC", 0) for v in c.values()) == 20 else None

    before = wait_for(every_worker_counted, "every worker's answers in its metrics file", s, timeout=10)[2]["GRPC"]

    # A restarted worker gets the key from the supervisor's memory, not from the file (gone now).
    key_file.unlink()
    wait_restarted(s, 2, kill_worker(s, 2))
    for i in range(20):
        predict_fresh(s.port, images_for(i))
    wait_for(lambda: per_worker_requests(mdir).get(2, {}).get("GRPC", 0) > before,
             "the restarted worker's answers in its metrics file", s, timeout=10)
    log = s.log()
    assert wrap_key.hex() not in log.lower() and wrap_key.decode("latin-1") not in log
    assert s.stop() == 0


# --- 9. one stop signal delivered twice (process and group) is one stop ---------------------------


@contextlib.contextmanager
def _own_session_server(tmp_path: Path, model_dir: Path, *extra: str,
                        name: str = "digits") -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A server in its own session (so its process group can be signalled as timeout(1) does),
    killed with its whole group at the end if it is still running."""
    port, rest = free_port(), free_port()
    log = tmp_path / f"serve-{port}.log"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "teeserve", "serve", f"--port={port}", f"--rest_api_port={rest}",
             "--host=127.0.0.1", f"--model_name={name}", f"--model_base_path={model_dir}", "--log-format=json",
             "--file_system_poll_wait_seconds=0", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _messages(log: Path) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        with_json = line.startswith("{")
        out.append(json.loads(line)["message"] if with_json else line)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_to_process_and_group_is_one_clean_stop(tmp_path: Path, onnx_model_dir: Path, workers: int) -> None:
    with _own_session_server(tmp_path, onnx_model_dir, f"--workers={workers}") as (proc, log):
        wait_for(lambda: proc.poll() is not None or "ready" in _messages(log), "ready", timeout=60)
        if workers > 1:
            wait_for(lambda: proc.poll() is not None or f"all {workers} workers up" in _messages(log),
                     "all workers up", timeout=60)
        assert proc.poll() is None, log.read_text()
        os.kill(proc.pid, signal.SIGTERM)  # what timeout(1) and systemd do: the process, then its group
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "again" not in text and "did not" not in text, text
    assert _messages(log)[-1] == "stopped"


def test_a_later_second_signal_still_stops_at_once(tmp_path: Path, slow_model_dir: Path) -> None:
    with _own_session_server(tmp_path, slow_model_dir, "--drain-timeout=60", name="slow") as (proc, log):
        wait_for(lambda: proc.poll() is not None or "ready" in _messages(log), "ready", timeout=60)
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        port = int(next(r["addresses"] for r in recs if "addresses" in r).rsplit(":", 1)[1])
        errors: list[Any] = []

        def slow_call() -> None:
            try:
                with fresh_channel(port) as ch:
                    prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
                        _slow_request(steps_for(30, slow_model_dir)), timeout=120, wait_for_ready=True)
            except grpc.RpcError as exc:
                errors.append(exc.code())

        t = threading.Thread(target=slow_call, daemon=True)
        t.start()
        time.sleep(1.0)  # in flight: the drain would wait for it up to 60 s
        assert t.is_alive() and not errors, errors
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.0)  # well past the echo window: this one is a real second request
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 1, log.read_text()
        assert time.monotonic() - t0 < 15
    assert any("received again: stopping now" in m for m in _messages(log)), log.read_text()


# --- 10. findings of the review: races and exit statuses ------------------------------------------


def test_a_reserved_port_cannot_be_reserved_again() -> None:
    """Two supervisors on one port: the second's check fails while the first's workers still load."""
    from teeserve.serving._server import ServeError
    from teeserve.serving._workers import _reserve

    port = free_port()
    first = _reserve("127.0.0.1", port, "gRPC")
    try:
        with pytest.raises(ServeError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"):
            _reserve("127.0.0.1", port, "gRPC")
        # ... while this server's own workers can still join (gRPC's SO_REUSEPORT + SO_REUSEADDR).
        joiner = socket.socket()
        joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        joiner.bind(("127.0.0.1", port))
        joiner.listen()
        joiner.close()
    finally:
        first.close()


def _model_names_fresh(port: int, names: tuple[str, ...]) -> frozenset[str]:
    have = set()
    for name in names:
        try:
            if model_state_fresh(port, name) == AVAILABLE:
                have.add(name)
        except grpc.RpcError:
            pass
    return frozenset(have)


def test_concurrent_reloads_on_different_workers_converge(start: Callable[..., ServerProcess],
                                                          onnx_model_dir: Path) -> None:
    s = start("--model_name=digits", f"--model_base_path={onnx_model_dir}", rest=False)
    sets = [("digits", f"m{i}") for i in range(6)]
    with futures.ThreadPoolExecutor(6) as pool:  # six reloads at once, over new connections
        list(pool.map(lambda names: _reload_adding(s.port, onnx_model_dir, names), sets))
    every = tuple({n for names in sets for n in names})

    def agreed() -> bool:
        seen = {_model_names_fresh(s.port, every) for _ in range(12)}
        return len(seen) == 1 and len(next(iter(seen))) == 2

    wait_for(agreed, "every worker on the same (last) config", s, timeout=30)


def test_group_signal_while_workers_start_is_a_clean_stop(tmp_path: Path, onnx_model_dir: Path) -> None:
    with _own_session_server(tmp_path, onnx_model_dir, "--workers=2") as (proc, log):
        wait_for(lambda: proc.poll() is not None or "worker 2 started" in _messages(log), "workers spawned",
                 timeout=60)
        os.killpg(proc.pid, signal.SIGTERM)  # the workers are still starting (spawn, imports, loading)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "did not exit cleanly" not in text, text


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/PID/stat``, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def slow_loading_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models that take a minute to load (their warmup): in 300 runs of 0.2 s, which a stop
    interrupts between two runs, or in one run of 60 s, which no stop can interrupt."""
    root = tmp_path_factory.mktemp("slow-loading")
    return {"short runs": write_slow_loading_model(root / "short" / "slow", 0.2, 300),
            "one long run": write_slow_loading_model(root / "long" / "slow", 60.0, 1)}


@pytest.mark.parametrize("workers, warmup", [(2, "short runs"), (2, "one long run"), (1, "short runs")])
def test_sigterm_while_the_models_load_is_a_clean_stop(tmp_path: Path, slow_loading_dirs: dict[str, Path],
                                                       workers: int, warmup: str) -> None:
    """SIGTERM to the supervisor and its group (as timeout(1) sends it) while every worker is still
    loading. Workers ignore the signal itself, and used to ignore the supervisor's "drain" too until
    their models were in: here a minute, so the supervisor killed them after --drain-timeout + 10 s
    and exited 1. Now the drain abandons the loads (a run in progress cannot be interrupted, and the
    drain timeout bounds the wait for it): exit 0, nothing loaded, no traceback."""
    with _own_session_server(tmp_path, slow_loading_dirs[warmup], f"--workers={workers}", "--drain-timeout=2",
                             name="slow") as (proc, log):
        # The TLS warning comes right before the models load; the warmup then keeps the process
        # busy on a core (the load itself takes milliseconds): once each worker has spent half a
        # second of CPU after the warning, it is inside its warmup (a minute long).
        wait_for(lambda: proc.poll() is not None or sum(m.startswith("NO TLS") for m in _messages(log)) == workers,
                 "every worker loading", timeout=60)
        assert proc.poll() is None, log.read_text()
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        pids = list(worker_pids(recs).values()) if workers > 1 else [proc.pid]
        cpu = {pid: _cpu_seconds(pid) for pid in pids}
        wait_for(lambda: all(_cpu_seconds(pid) - cpu[pid] >= 0.5 for pid in pids),
                 "every worker in its warmup", timeout=60)
        os.kill(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "did not exit cleanly" not in text and "killed" not in text, text
    messages = _messages(log)
    assert not any("is AVAILABLE" in m or m.startswith("warmed up") for m in messages), text  # never finished
    assert messages[-1] == "stopped", text


def test_stop_while_a_worker_waits_for_its_restart_exits_0(tmp_path: Path, onnx_model_dir: Path) -> None:
    with _own_session_server(tmp_path, onnx_model_dir, "--workers=2") as (proc, log):
        wait_for(lambda: proc.poll() is not None or "all 2 workers up" in _messages(log), "all workers up",
                 timeout=60)
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        os.kill(worker_pids(recs)[1], signal.SIGKILL)
        wait_for(lambda: any("exited unexpectedly" in m for m in _messages(log)), "the crash noticed", timeout=30)
        os.kill(proc.pid, signal.SIGTERM)  # before the 1 s back-off has passed
        code = proc.wait(60)
    assert code == 0, log.read_text()


def test_why_a_restart_failed_is_logged(tmp_path: Path, onnx_model_dir: Path) -> None:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    with _own_session_server(tmp_path, onnx_model_dir, "--workers=2",
                                    f"--monitoring_config_file={monitoring}") as (proc, log):
        wait_for(lambda: proc.poll() is not None or "all 2 workers up" in _messages(log), "all workers up",
                 timeout=60)
        recs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        monitoring.unlink()  # the restarted worker cannot read it any more
        os.kill(worker_pids(recs)[1], signal.SIGKILL)
        wait_for(lambda: any(m.startswith("worker 1: ") and "monitoring" in m for m in _messages(log)),
                 "the reason of the failed restart in the log", timeout=30)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)


def test_an_unguarded_embedding_script_gets_a_clear_error(tmp_path: Path, onnx_model_dir: Path) -> None:
    script = tmp_path / "embed.py"
    script.write_text(
        "import sys\nfrom teeserve.cli import main\n"  # no `if __name__ == "__main__":`
        f"sys.exit(main(['serve', '--workers=2', '--host=127.0.0.1', '--port={free_port()}', "
        f"'--model_name=digits', '--model_base_path={onnx_model_dir}']))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "if __name__" in out.stderr, out.stderr


def test_a_model_key_not_held_stops_the_supervisor_before_any_worker(tmp_path: Path, onnx_model_dir: Path) -> None:
    key = tmp_path / "wrap_key"
    key.write_bytes(os.urandom(16))
    out = subprocess.run(
        [sys.executable, "-m", "teeserve", "serve", "--workers=2", "--host=127.0.0.1", f"--port={free_port()}",
         "--model_name=digits", f"--model_base_path={onnx_model_dir}", f"--wrap-key={key}",
         "--model-key=digits=owner-b"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "does not hold: owner-b" in out.stderr and "starting 2 workers" not in out.stderr, out.stderr


# --- the supervisor's reload bookkeeping (real pipes, no processes) --------------------------------


class _DeadProcess:
    """What the supervisor reads of a worker process that has exited."""

    exitcode = -signal.SIGKILL

    def join(self, timeout: float | None = None) -> None:
        return None


def _supervisor_with_pipes(tmp_path: Path, workers: int) -> tuple[Any, list[Any]]:
    import multiprocessing as mp

    from teeserve.serving import _workers

    options = parse_serve_args(["--model_name=m", f"--model_base_path={tmp_path}", f"--workers={workers}"])
    sup = _workers._Supervisor(options, {}, str(tmp_path))
    ends = []
    for w in sup.workers:
        parent, child = mp.Pipe(duplex=True)
        w.conn, w.up = parent, True
        ends.append(child)
    return sup, ends


def _received(end: Any) -> list[Any]:
    out = []
    while end.poll(0.2):
        out.append(end.recv())
    return out


def test_a_reload_is_answered_when_every_running_worker_applied_it_or_died(tmp_path: Path) -> None:
    sup, ends = _supervisor_with_pipes(tmp_path, 4)
    sup.workers[3].up = False  # still starting: it applies the reload before it listens, then says so
    ends[0].send(("reload", b"config", 7, "digest"))  # worker 1 applied a HandleReloadConfigRequest
    sup._message(sup.workers[0])
    sent = [_received(e) for e in ends]
    assert all(len(s) == 1 and s[0][:2] == ("reload", b"config") for s in sent), sent
    rid = sent[0][0][2]
    assert sup.last_reload == (b"config", "digest")
    for i in (0, 1, 3):  # workers 1, 2 and the starting 4 applied it ...
        ends[i].send(("applied", rid))
        sup._message(sup.workers[i])
    assert _received(ends[0]) == [], "worker 3 runs and has not applied it yet"
    sup.workers[2].process = _DeadProcess()  # ... and worker 3 dies instead
    sup._exited(sup.workers[2])
    assert _received(ends[0]) == [("reloaded", 7)]
    assert sup._relays == {}


def test_a_starting_worker_is_waited_for(tmp_path: Path) -> None:
    sup, ends = _supervisor_with_pipes(tmp_path, 2)
    sup.workers[1].up = False
    ends[0].send(("reload", b"config", 3, None))
    sup._message(sup.workers[0])
    rid = _received(ends[1])[0][2]
    ends[0].send(("applied", rid))
    sup._message(sup.workers[0])
    assert _received(ends[0]) == [("reload", b"config", rid)], "no answer before the starting worker applied it"
    ends[1].send(("applied", rid))
    sup._message(sup.workers[1])
    assert _received(ends[0]) == [("reloaded", 3)]


def test_a_reload_whose_worker_died_is_forgotten(tmp_path: Path) -> None:
    sup, ends = _supervisor_with_pipes(tmp_path, 2)
    ends[0].send(("reload", b"config", 1, None))
    sup._message(sup.workers[0])
    rid = _received(ends[1])[0][2]
    sup.workers[0].process = _DeadProcess()
    sup._exited(sup.workers[0])
    assert sup._relays == {}, "nobody waits for the answer any more"
    ends[1].send(("applied", rid))  # a late acknowledgement is ignored
    sup._message(sup.workers[1])
    assert _received(ends[1]) == []
