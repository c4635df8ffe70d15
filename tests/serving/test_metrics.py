"""serving/_metrics.py: TF Serving's metric names, teeserve's histograms, private registries."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from teeserve.serving._metrics import METRICS, TF_LATENCY_BUCKETS_US, UNKNOWN_MODEL, Metrics


def parse(m: Metrics) -> dict[str, object]:
    data, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(data.decode())}


def sample(m: Metrics, name: str, **labels: str) -> float:
    data, _ = m.render()
    for family in text_string_to_metric_families(data.decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError((name, labels))


def test_tf_serving_names_with_colons_are_exported_exactly() -> None:
    m = Metrics(process_collector=False)
    m.record_request("half", "Predict", "REST", "OK", 0.002)
    m.record_request("half", "Predict", "GRPC", "INVALID_ARGUMENT", 0.0005)
    text = m.render()[0].decode()
    # TF Serving's exact sample names (no "_total" appended to its counters)
    assert ':tensorflow:serving:request_count{model_name="half",status="OK"} 1.0' in text
    assert ':tensorflow:serving:request_count{model_name="half",status="INVALID_ARGUMENT"} 1.0' in text
    assert sample(m, ":tensorflow:serving:request_latency_count", model_name="half", API="Predict", entrypoint="REST") == 1
    # TF records microseconds: 2 ms lands in the bucket that bounds 2000 us
    le = next(b for b in TF_LATENCY_BUCKETS_US if b >= 2000)
    assert sample(m, ":tensorflow:serving:request_latency_bucket", model_name="half", API="Predict",
                  entrypoint="REST", le=repr(le) if le != int(le) else f"{le}") == 1
    assert sample(m, ":tensorflow:serving:request_latency_sum", model_name="half", API="Predict",
                  entrypoint="REST") == pytest.approx(2000)
    # teeserve's own, in seconds, per model, API and protocol
    assert sample(m, "teeserve_requests_total", model_name="half", api="Predict", protocol="GRPC",
                  code="INVALID_ARGUMENT") == 1
    assert sample(m, "teeserve_request_duration_seconds_sum", model_name="half", api="Predict",
                  protocol="REST") == pytest.approx(0.002)


def test_tf_request_count_counts_inference_apis_only() -> None:
    m = Metrics(process_collector=False)
    m.record_request("half", "GetModelStatus", "REST", "OK", 0.001)
    m.record_request("half", "Classify", "GRPC", "OK", 0.001)
    assert sample(m, ":tensorflow:serving:request_count", model_name="half", status="OK") == 1
    with pytest.raises(KeyError):
        sample(m, ":tensorflow:serving:request_latency_count", model_name="half", API="GetModelStatus", entrypoint="REST")
    assert sample(m, "teeserve_requests_total", model_name="half", api="GetModelStatus", protocol="REST", code="OK") == 1


def test_tf_buckets_are_exponential_10_by_1_8() -> None:
    assert len(TF_LATENCY_BUCKETS_US) == 33
    assert TF_LATENCY_BUCKETS_US[0] == 10 and TF_LATENCY_BUCKETS_US[1] == pytest.approx(18)
    assert TF_LATENCY_BUCKETS_US[-1] == float("inf")


def test_runtime_load_and_batch_metrics() -> None:
    m = Metrics(process_collector=False)
    m.record_runtime("half", "Predict", "ONNXRuntime", 0.001)
    m.record_load("/models/half/1", "success", 0.5)
    m.record_load("/models/half/2", "DATA_LOSS", 0.1)
    m.record_batch("half", batch_size=3, padding=1, queue_seconds=0.004)
    assert sample(m, ":tensorflow:serving:runtime_latency_count", model_name="half", API="Predict",
                  runtime="ONNXRuntime") == 1
    assert sample(m, ":tensorflow:cc:saved_model:load_attempt_count", model_path="/models/half/1", status="success") == 1
    assert sample(m, ":tensorflow:cc:saved_model:load_attempt_count", model_path="/models/half/2", status="DATA_LOSS") == 1
    assert sample(m, ":tensorflow:cc:saved_model:load_latency", model_path="/models/half/1") == pytest.approx(5e5)
    with pytest.raises(KeyError):  # a failed load adds no latency
        sample(m, ":tensorflow:cc:saved_model:load_latency", model_path="/models/half/2")
    assert sample(m, ":tensorflow:serving:batching_session:processed_batch_size_sum", model_name="half") == 4
    assert sample(m, ":tensorflow:serving:batching_session:padding_size_sum", model_name="half") == 1
    assert sample(m, ":tensorflow:serving:batching_session:queuing_latency_sum", model_name="half") == pytest.approx(4000)
    assert sample(m, "teeserve_model_load_duration_seconds_count", status="success") == 1


def test_private_registries_are_independent() -> None:
    a, b = Metrics(process_collector=False), Metrics(CollectorRegistry(), process_collector=False)
    a.record_request("m", "Predict", "REST", "OK", 0.1)
    assert sample(a, ":tensorflow:serving:request_count", model_name="m", status="OK") == 1
    with pytest.raises(KeyError):
        sample(b, ":tensorflow:serving:request_count", model_name="m", status="OK")


def test_process_start_time_exported() -> None:
    families = parse(Metrics())
    assert "process_start_time_seconds" in families
    assert "process_start_time_seconds" in parse(METRICS)


def test_concurrent_recording_is_exact() -> None:
    m = Metrics(process_collector=False)

    def work() -> None:
        for _ in range(2000):
            m.record_request("m", "Predict", "REST", "OK", 0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sample(m, ":tensorflow:serving:request_count", model_name="m", status="OK") == 8000


def test_long_label_values_are_capped() -> None:
    m = Metrics(process_collector=False)
    m.record_request("x" * 1000, "Predict", "REST", "OK", 0.1)
    assert sample(m, ":tensorflow:serving:request_count", model_name="x" * 200, status="OK") == 1
    assert UNKNOWN_MODEL == "<unknown>"


_MULTIPROCESS_SCRIPT = r"""
import json, os, random, sys, threading
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from teeserve.serving._metrics import Metrics

def on_disk():
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect() for s in f.samples}

m = Metrics(process_collector=False)
assert m.multiprocess
rng = random.Random(7)
latencies = [rng.choice([0.00004, 0.0003, 0.0021, 0.75, 3.0, 100.0]) * rng.uniform(0.5, 1.5) for _ in range(400)]

def record(chunk):  # several threads at once, as the gRPC worker threads and the loop
    for s in chunk:
        m.record_request("digits", "Predict", "REST", "OK", s)
        m.record_runtime("digits", "Predict", "ONNXRuntime", s / 2)

threads = [threading.Thread(target=record, args=(latencies[i::4],)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
before = on_disk()
m.flush()
after = on_disk()
text = m.render()[0].decode()
print(json.dumps({"latencies": latencies, "before": {repr(k): v for k, v in before.items()},
                  "after": {repr(k): v for k, v in after.items()}, "text": text}))
"""


def test_workers_batch_their_request_numbers_and_a_flush_writes_them_exactly(tmp_path) -> None:
    """With --workers (PROMETHEUS_MULTIPROC_DIR set before prometheus-client is imported, as the
    supervisor does) a request only adds to in-memory sums; flush() writes the same counts, sums and
    buckets that observe() would have, and a scrape (render) flushes first."""
    import json
    import os
    import subprocess
    import sys

    from teeserve.serving._metrics import LATENCY_BUCKETS_S

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _MULTIPROCESS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    lat = got["latencies"]
    assert not any("request_duration" in k and v for k, v in got["before"].items()), "written before a flush"
    families = {f.name: f for f in text_string_to_metric_families(got["text"])}

    def value(family: str, name: str, le: float | None = None, **labels: str) -> float:
        return next(s.value for s in families[family].samples if s.name == name and
                    {k: v for k, v in s.labels.items() if k != "le"} == labels and
                    (le is None or float(s.labels["le"]) == le))

    rest = {"model_name": "digits", "api": "Predict", "protocol": "REST"}
    assert value("teeserve_requests", "teeserve_requests_total", **rest, code="OK") == len(lat)
    assert value("teeserve_request_duration_seconds", "teeserve_request_duration_seconds_count", **rest) == len(lat)
    assert value("teeserve_request_duration_seconds", "teeserve_request_duration_seconds_sum", **rest) == \
        pytest.approx(sum(lat))
    for le in LATENCY_BUCKETS_S[:-1]:  # cumulative buckets, as observe() would give
        want = sum(1 for s in lat if s <= le)
        assert value("teeserve_request_duration_seconds", "teeserve_request_duration_seconds_bucket", le, **rest) \
            == want, le
    tf = {"model_name": "digits", "API": "Predict", "entrypoint": "REST"}
    assert value(":tensorflow:serving:request_latency", ":tensorflow:serving:request_latency_count", **tf) == len(lat)
    for le in TF_LATENCY_BUCKETS_US[:-1:5]:
        want = sum(1 for s in lat if s * 1e6 <= le)
        assert value(":tensorflow:serving:request_latency", ":tensorflow:serving:request_latency_bucket", le, **tf) \
            == want, le
    assert value(":tensorflow:serving:request_count", ":tensorflow:serving:request_count", model_name="digits",
                 status="OK") == len(lat)
    rt = {"model_name": "digits", "API": "Predict", "runtime": "ONNXRuntime"}
    assert value(":tensorflow:serving:runtime_latency", ":tensorflow:serving:runtime_latency_sum", **rt) == \
        pytest.approx(sum(s / 2 for s in lat) * 1e6)


_SLOT_SCRIPT = r"""
import sys
from teeserve.serving._metrics import Metrics, name_worker_files
name_worker_files(int(sys.argv[1]))
m = Metrics(process_collector=False)
for _ in range(int(sys.argv[2])):
    m.record_request("digits", "Predict", "GRPC", "OK", 0.001)
m.flush()
print(m.render()[0].decode())
"""


def test_worker_files_are_named_after_the_slot_and_a_successor_counts_on(tmp_path) -> None:
    """name_worker_files: a process in slot 2 after another one (a restarted worker) writes into the
    same files and counts on from their totals; no file is named after a pid."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))

    def run(slot: int, n: int) -> float:
        out = subprocess.run([sys.executable, "-c", _SLOT_SCRIPT, str(slot), str(n)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return next(s.value for f in text_string_to_metric_families(out.stdout) for s in f.samples
                    if s.name == "teeserve_requests_total" and s.labels.get("protocol") == "GRPC")

    assert run(2, 5) == 5
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files and all("_worker2.db" in f for f in files), files
    assert run(2, 7) == 12  # the successor in slot 2: 5 + 7 in the same files
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert run(1, 1) == 13  # another slot: files of its own, merged by the scrape
    assert len(list(tmp_path.glob("counter_worker1.db"))) == 1


def test_worker_files_need_the_multiprocess_directory(monkeypatch) -> None:
    from teeserve.serving._metrics import name_worker_files

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        name_worker_files(1)
