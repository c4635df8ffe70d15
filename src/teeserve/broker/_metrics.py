"""Prometheus metrics of the broker, in a private registry (never the process-global one).

Labels are low-cardinality and carry no secret material: ``decision`` (released/denied), ``reason``
(a category from :data:`~teeserve.broker._decide.CATEGORIES`) and ``tee`` (sgx/tdx/sim/unknown).
Neither secret names (a client chooses them) nor measurements ever become labels.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["BrokerMetrics"]

log = logging.getLogger("teeserve.broker")


class BrokerMetrics:
    """The broker's counters, gauges and the verification-latency histogram."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "teeserve_broker_attempts", "Secret release attempts by decision, reason category and TEE kind",
            ("decision", "reason", "tee"), registry=self.registry,
        )  # fmt: skip
        self.verification_seconds = Histogram(
            "teeserve_broker_verification_seconds",
            "RA-TLS + quote verification + policy evaluation time per attempt",
            ("tee",),
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.active_connections = Gauge(
            "teeserve_broker_active_connections", "Provisioning sessions being served", registry=self.registry
        )
        self.policy_reloads = Counter(
            "teeserve_broker_policy_reloads", "Policy reload attempts", ("result",), registry=self.registry
        )
        self.policy_generation = Gauge(
            "teeserve_broker_policy_generation", "Generation of the policy in force (1 at start)",
            registry=self.registry,
        )  # fmt: skip
        self.policy_stale = Gauge(
            "teeserve_broker_policy_stale",
            "1 when the last reload was rejected and an older policy is still in force",
            registry=self.registry,
        )
        self.policy_generation.set(1)
        self._server: Any = None

    def on_reload(self, ok: bool, generation: int) -> None:
        self.policy_reloads.labels(result="ok" if ok else "rejected").inc()
        self.policy_generation.set(generation)
        self.policy_stale.set(0 if ok else 1)

    def render(self) -> bytes:
        """The text exposition (what ``/metrics`` serves)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` in a thread; returns the bound port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
