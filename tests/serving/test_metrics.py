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
