"""Prometheus metrics: TensorFlow Serving's names plus teeserve's own latency histograms.

Strategy: one :class:`Metrics` object owns a private ``CollectorRegistry`` (tests make several; the
server makes one, :data:`METRICS`, that the core and both front ends record into). Rendering uses
prometheus-client's own text exposition.

TensorFlow Serving compatibility (tf-serving-api.md §6): TF's internal names such as
``/tensorflow/serving/request_count`` are exported with ``/`` turned into ``:``. Prometheus allows
colons in metric names and prometheus-client accepts them. Two details of TF's exporter are kept:

- TF's latencies are in **microseconds** with exponential buckets ``10 * 1.8**i`` (33 buckets);
- TF's counters are exposed under their exact sample names (``:tensorflow:serving:request_count``).
  prometheus-client always appends ``_total`` to a ``Counter``'s sample, so these monotonic values are
  typed ``gauge`` in the exposition instead; PromQL (``rate``, ``increase``) works the same on them and
  dashboards written for TF Serving keep working.

As in TF Serving, ``request_count`` and ``request_latency`` count the inference APIs (Predict,
Classify, Regress, MultiInference) only.

teeserve's own metrics follow Prometheus conventions (seconds, ``_total`` counters), for every API:
``teeserve_requests_total{model_name,api,protocol,code}`` and
``teeserve_request_duration_seconds{model_name,api,protocol}``, plus runtime, load and batching
histograms, and ``process_start_time_seconds`` from the default process collector (on Linux).

With ``--workers N`` every worker process records into prometheus-client's multiprocess files (the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a private 0700 directory before it starts them) and a
scrape, whichever worker answers it, renders all workers together: counters and histograms summed,
TF's counter-like gauges summed (``multiprocess_mode="sum"``). Each worker's files are named after
its slot, not its pid (:func:`name_worker_files`), so a restarted worker takes them over and counts on
from their totals. The per-process ``process_*`` metrics
are left out then (each would describe only the worker that answered). Each write to those files is a
locked update of a memory-mapped file, ten per request; measured with 2 workers they cost about 12 %
of the server's CPU per small REST request. So a worker adds each request's numbers to plain in-memory
sums (:meth:`Metrics.flush` writes them, every :data:`FLUSH_S` seconds from the worker's loop, before
it renders a scrape, and when it stops): a scrape can miss up to that long of the *other* workers'
latest requests, and a worker that crashes loses at most that long of its counts.

Labels carry model names, model paths, API names and status codes only: never tensor contents,
request bodies or key material. Callers that see names from the network (the front ends) must only
pass names of models the server knows (see :data:`UNKNOWN_MODEL`), so a client cannot grow the label
set without bound.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

__all__ = ["Metrics", "METRICS", "name_worker_files", "UNKNOWN_MODEL", "INFERENCE_APIS", "TF_LATENCY_BUCKETS_US",
           "LATENCY_BUCKETS_S"]

#: TensorFlow Serving's latency buckets: ``Buckets::Exponential(10, 1.8, 33)`` in microseconds.
TF_LATENCY_BUCKETS_US: tuple[float, ...] = tuple(10.0 * 1.8**i for i in range(32)) + (float("inf"),)

#: teeserve's latency buckets in seconds (100 µs .. 60 s).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, float("inf"),
)

#: Batch-size buckets (TF's ``Exponential(1, 2, 15)`` style: 1, 2, 4, ... 16384).
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(15)) + (float("inf"),)

#: The APIs TF Serving counts in ``request_count`` / ``request_latency``.
INFERENCE_APIS = frozenset({"Predict", "Classify", "Regress", "MultiInference"})

#: Label value used for a model name that the server does not know (keeps label cardinality bounded).
UNKNOWN_MODEL = "<unknown>"

_MAX_LABEL = 200
_MAX_CACHED = 10000

#: With ``--workers``, how often a worker writes its request numbers to the shared files (seconds).
FLUSH_S = 0.25


def _label(value: object) -> str:
    text = str(value)
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL]


class Metrics:
    """The server's metrics in one private registry.

    All ``record_*`` methods are thread-safe (prometheus-client locks per metric; the pending sums of
    ``--workers`` mode have a lock of their own) and cheap enough for the request path. ``seconds``
    arguments are wall-clock durations in seconds.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collector: bool = True) -> None:
        # Labelled children by label values: ``labels()`` costs more than the observation itself.
        self._request_children: dict[tuple[str, str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._runtime_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        #: Several worker processes share these metrics through files (see the module docstring).
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._pending_lock = threading.Lock()
        self._pending_adds: dict[Any, int] = {}
        self._pending_obs: dict[Any, list[Any]] = {}
        if process_collector and not self.multiprocess:
            # process_start_time_seconds, process_cpu_seconds_total, ... (Linux /proc only).
            ProcessCollector(registry=r)

        # --- TensorFlow Serving compatible -------------------------------------------------------
        self.tf_request_count = Gauge(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ["model_name", "status"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=TF_LATENCY_BUCKETS_US,
            registry=r,
        )
        self.tf_runtime_latency = Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ["model_name", "API", "runtime"],
            buckets=TF_LATENCY_BUCKETS_US,
            registry=r,
        )
        self.tf_load_attempt_count = Gauge(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was attempted to be loaded.",
            ["model_path", "status"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_load_latency = Gauge(
            ":tensorflow:cc:saved_model:load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ["model_path"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_batch_queuing_latency = Histogram(
            ":tensorflow:serving:batching_session:queuing_latency",
            "Distribution of wall time (in microseconds) spent in the batch queue.",
            ["model_name"],
            buckets=TF_LATENCY_BUCKETS_US,
            registry=r,
        )
        self.tf_batch_input_size = Histogram(
            ":tensorflow:serving:batching_session:input_batch_size",
            "Distribution of the size of the batches before padding.",
            ["model_name"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.tf_batch_processed_size = Histogram(
            ":tensorflow:serving:batching_session:processed_batch_size",
            "Distribution of the size of the batches after padding.",
            ["model_name"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.tf_batch_padding_size = Histogram(
            ":tensorflow:serving:batching_session:padding_size",
            "Distribution of the number of padding rows added to a batch.",
            ["model_name"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.tf_batch_run_count = Gauge(
            ":tensorflow:serving:batching_session:wrapped_run_count",
            "The number of batched session runs.",
            ["model_name"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_warmup_latency = Gauge(
            ":tensorflow:serving:model_warmup_latency",
            "Latency in microseconds for model warm up.",
            ["model_path"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_warmup_records_read = Gauge(
            ":tensorflow:serving:model_warmup_records_read",
            "The number of warmup records read (each replayed --num_request_iterations_for_warmup times).",
            ["model_path"],
            registry=r,
            multiprocess_mode="sum",
        )
        self.tf_request_example_counts = Histogram(
            ":tensorflow:serving:request_example_counts",
            "The number of tensorflow.Examples per request (Classify, Regress, MultiInference).",
            ["model_name"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )

        # --- teeserve's own ---------------------------------------------------------------------
        self.requests = Counter(
            "teeserve_requests",
            "Requests by model, API, protocol (REST or GRPC) and canonical status code.",
            ["model_name", "api", "protocol", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "teeserve_request_duration_seconds",
            "Wall time of a request from its arrival to its response, by model, API and protocol.",
            ["model_name", "api", "protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.runtime_duration = Histogram(
            "teeserve_runtime_duration_seconds",
            "Wall time spent in the inference runtime (TensorFlow or ONNX Runtime).",
            ["model_name", "api", "runtime"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.load_duration = Histogram(
            "teeserve_model_load_duration_seconds",
            "Wall time of model version loads (decryption included), by outcome.",
            ["status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_queue_duration = Histogram(
            "teeserve_batch_queue_duration_seconds",
            "Time requests wait in the batch queue.",
            ["model_name"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    # --- recording ---------------------------------------------------------------------------------

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One finished request. ``api``: Predict, Classify, Regress, MultiInference,
        GetModelMetadata, GetModelStatus, ...; ``entrypoint``: ``REST`` or ``GRPC``; ``status``: the
        canonical code name (``OK``, ``INVALID_ARGUMENT``, ...).

        As in TF Serving, ``:tensorflow:serving:request_count`` and ``request_latency`` count inference
        APIs only (:data:`INFERENCE_APIS`); teeserve's own request metrics count every API."""
        key = (model_name, api, entrypoint, status)
        children = self._request_children.get(key)
        if children is None:
            model = _label(model_name)
            inference = api in INFERENCE_APIS
            children = (
                self.tf_request_count.labels(model, status) if inference else None,
                self.tf_request_latency.labels(model, api, entrypoint) if inference else None,
                self.requests.labels(model, api, entrypoint, status),
                self.request_duration.labels(model, api, entrypoint),
            )
            if len(self._request_children) < _MAX_CACHED:
                self._request_children[key] = children
        count, latency_us, requests, duration = children
        if self.multiprocess:
            with self._pending_lock:
                if count is not None:
                    self._add(count)
                    self._observe(latency_us, seconds * 1e6)
                self._add(requests)
                self._observe(duration, seconds)
            return
        if count is not None:
            count.inc()
            latency_us.observe(seconds * 1e6)
        requests.inc()
        duration.observe(seconds)

    def record_runtime(self, model_name: str, api: str, runtime: str, seconds: float) -> None:
        """Time spent inside the runtime (``runtime``: ``TF1Session``-style name, e.g. ``TensorFlow``,
        ``ONNXRuntime``)."""
        key = (model_name, api, runtime)
        children = self._runtime_children.get(key)
        if children is None:
            model = _label(model_name)
            children = (self.tf_runtime_latency.labels(model, api, runtime),
                        self.runtime_duration.labels(model, api, runtime))
            if len(self._runtime_children) < _MAX_CACHED:
                self._runtime_children[key] = children
        if self.multiprocess:
            with self._pending_lock:
                self._observe(children[0], seconds * 1e6)
                self._observe(children[1], seconds)
            return
        children[0].observe(seconds * 1e6)
        children[1].observe(seconds)

    # --- batched writes (--workers) ---------------------------------------------------------------

    def _add(self, child: Any) -> None:
        """Count one for a counter-like child (caller holds ``_pending_lock``)."""
        self._pending_adds[child] = self._pending_adds.get(child, 0) + 1

    def _observe(self, child: Any, amount: float) -> None:
        """One histogram observation (caller holds ``_pending_lock``): the bucket is the first bound
        >= amount, as prometheus-client's ``observe``; a NaN counts in no bucket, as there."""
        pending = self._pending_obs.get(child)
        if pending is None:
            pending = self._pending_obs[child] = [0.0, [0] * len(child._upper_bounds)]
        pending[0] += amount
        if amount == amount:
            pending[1][bisect_left(child._upper_bounds, amount)] += 1

    def flush(self) -> None:
        """Write the request numbers gathered since the last flush (``--workers`` only; a no-op
        otherwise). Thread-safe; called by the worker's loop every :data:`FLUSH_S` seconds, before a
        scrape and at stop."""
        if not self.multiprocess:
            return
        with self._pending_lock:
            adds, self._pending_adds = self._pending_adds, {}
            obs, self._pending_obs = self._pending_obs, {}
        for child, n in adds.items():
            child.inc(n)
        for child, (total, counts) in obs.items():
            # prometheus-client's Histogram keeps a value per bucket and one for the sum (what its
            # observe() updates); the batch updates them once each.
            child._sum.inc(total)
            for i, n in enumerate(counts):
                if n:
                    child._buckets[i].inc(n)

    def record_load(self, model_path: str, status: str, seconds: float) -> None:
        """One load attempt of a model version (``status``: ``success`` or the error code name, as
        TF's ``load_attempt_count``). ``model_path`` is the version directory, never a key."""
        path = _label(model_path)
        self.tf_load_attempt_count.labels(path, status).inc()
        if status == "success":
            self.tf_load_latency.labels(path).inc(seconds * 1e6)
        self.load_duration.labels(status).observe(seconds)

    def record_warmup(self, model_path: str, records: int, seconds: float) -> None:
        """A version's warmup that succeeded: ``records`` read from its warmup file in ``seconds``."""
        path = _label(model_path)
        self.tf_warmup_latency.labels(path).inc(seconds * 1e6)
        self.tf_warmup_records_read.labels(path).inc(records)

    def record_examples(self, model_name: str, examples: int) -> None:
        """One Classify, Regress or MultiInference request of ``examples`` tf.Examples."""
        self.tf_request_example_counts.labels(_label(model_name)).observe(examples)

    def record_batch(self, model_name: str, batch_size: int, padding: int, queue_seconds: float) -> None:
        """One executed batch: ``batch_size`` real rows, ``padding`` rows added, and how long its
        oldest task waited in the queue."""
        model = _label(model_name)
        self.tf_batch_input_size.labels(model).observe(batch_size)
        self.tf_batch_processed_size.labels(model).observe(batch_size + padding)
        self.tf_batch_padding_size.labels(model).observe(padding)
        self.tf_batch_run_count.labels(model).inc()
        self.tf_batch_queuing_latency.labels(model).observe(queue_seconds * 1e6)
        self.batch_queue_duration.labels(model).observe(queue_seconds)

    # --- exposition --------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) and its content type."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            self.flush()
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_PLAIN_0_0_4
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


def name_worker_files(slot: int) -> None:
    """With ``--workers``: this process records into files named after its worker slot
    (``counter_worker2.db``) instead of its pid. Call it before any metric is recorded.

    A restarted worker then takes over its predecessor's files and counts on from their totals:
    the merged totals never go back, and a worker that crashes again and again does not leave one
    more set of files behind each time (the directory would grow without bound, and every scrape
    reads every file). prometheus-client's rule for the name holds: no two processes that run at
    the same time use the same one, since the supervisor restarts a slot only after the process
    in it has exited.
    """
    from prometheus_client import values

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("name_worker_files needs PROMETHEUS_MULTIPROC_DIR (set by the supervisor)")
    name = f"worker{int(slot)}"
    values.ValueClass = values.MultiProcessValue(lambda: name)


#: The process-wide instance the serving core, the gRPC and REST front ends record into.
METRICS = Metrics()
