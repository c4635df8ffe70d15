"""Batching through a running ``teeserve serve`` (``--enable_batching --batching_parameters_file``).

``test_batching.py`` covers the batcher itself; here a real server process gets concurrent gRPC (the
thread-pool server hands batched Predicts to the event loop, where the batch queues live) and REST
requests, each of one row with its own values: every answer must be that row's own result, as without
batching, and the server's TF-named batching metrics must show requests merged into fewer, padded
batches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_service_pb2_grpc

from test_server import ServerProcess, digits_request  # the same folder's helpers

pytestmark = pytest.mark.slow


def test_concurrent_grpc_and_rest_requests_are_batched_and_each_gets_its_own_answer(
        tmp_path: Path, onnx_model_dir: Path, digits_reference: Any) -> None:
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 100000 }\n"
                      "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }\n"
                      "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    s = ServerProcess(tmp_path, "--model_name=digits", f"--model_base_path={onnx_model_dir}",
                      "--enable_batching=true", f"--batching_parameters_file={params}",
                      f"--monitoring_config_file={monitoring}", rest=True)
    try:
        n = 24
        rows = np.random.default_rng(11).random((n, 1, 8, 8), dtype=np.float32)
        with s.channel() as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)

            def ask(i: int) -> tuple[np.ndarray, np.ndarray]:
                if i % 2 == 0:
                    out = stub.Predict(digits_request(images=rows[i]), timeout=60).outputs
                    return tf.make_ndarray(out["classes"]), tf.make_ndarray(out["probabilities"])
                r = httpx.post(f"http://127.0.0.1:{s.rest_port}/v1/models/digits:predict",
                               json={"instances": rows[i].tolist()}, timeout=60)
                assert r.status_code == 200, r.text
                [p] = r.json()["predictions"]
                return np.array([p["classes"]]), np.array([p["probabilities"]], np.float32)

            with ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(ask, range(n)))
        for i, (classes, probabilities) in enumerate(answers):
            want = digits_reference(rows[i])
            assert classes.tolist() == want["classes"].tolist(), i
            np.testing.assert_allclose(probabilities, want["probabilities"], rtol=1e-5, atol=1e-6)

        text = httpx.get(f"http://127.0.0.1:{s.rest_port}/metrics", timeout=10).text
        values = {(smp.name, smp.labels.get("model_name")): smp.value
                  for family in text_string_to_metric_families(text) for smp in family.samples
                  if "le" not in smp.labels}
        prefix = ":tensorflow:serving:batching_session:"
        rows_in = values[(prefix + "input_batch_size_sum", "digits")]
        batches = values[(prefix + "input_batch_size_count", "digits")]
        processed = values[(prefix + "processed_batch_size_sum", "digits")]
        assert rows_in == n  # every request's row went through the batcher ...
        assert batches < n  # ... merged with others ...
        assert processed >= rows_in and processed % 4 == 0  # ... and padded up to an allowed batch size
        assert processed - rows_in == values[(prefix + "padding_size_sum", "digits")]
    finally:
        assert s.stop() == 0
