"""The key broker: Gramine's provisioning server + RA-TLS/DCAP verification + policy + audit.

Strategy: ``provision.ProvisionServer`` does TLS and Gramine's wire protocol; this module supplies its
``authorize`` callback (rate limit per peer address → :func:`~teeserve.broker._decide.decide_certificate`
→ read the default secret) and its ``on_provisioned`` callback (teeserve's named-secret extension,
``_extension``). Every decision is logged locally with every failed rule, appended to the audit
*before* any secret byte is sent (an audit failure denies), and counted in the metrics. The remote
side learns nothing on denial: the session is closed without a byte, as Gramine's server does.

The verified quote of a session is kept in a thread-local between the two callbacks (the provisioning
server runs both in the session's worker thread), so named requests are judged against the evidence
of the very channel they arrive on, under the policy in force at the time of each request.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..attest import CollateralSource, CollateralUnavailable, Policy, PolicyError, read_secret
from ..attest import ratls
from ..provision import ProtocolError, ProvisionServer, ServerSession
from ._audit import AuditLog
from ._decide import Decision, decide_certificate, denial, judge
from ._errors import ExtensionProtocolError
from ._extension import RequestParser, encode_response
from ._metrics import BrokerMetrics
from ._policy_state import PolicyHolder
from ._ratelimit import RateLimiter

__all__ = [
    "KeyBroker",
    "BrokerServer",
    "LockedCollateralSource",
    "MultiCollateralSource",
    "MAX_NAMED_REQUESTS",
]

log = logging.getLogger("teeserve.broker")

#: named-secret requests allowed per session (beyond it the session is closed)
MAX_NAMED_REQUESTS = 32


class LockedCollateralSource:
    """Serializes ``get`` on a collateral source that is not safe to call from several threads.

    The broker no longer wraps its sources in one: :class:`~teeserve.attest.CachingCollateralSource`
    locks per platform itself, and one lock for all let a client with a made-up FMSPC (a quote not yet
    verified) stall every other attestation while its fetch ran."""

    def __init__(self, source: CollateralSource) -> None:
        self.source = source
        self._lock = threading.Lock()

    def get(self, quote: Any, *, now: int) -> Any:
        with self._lock:
            return self.source.get(quote, now=now)


class MultiCollateralSource:
    """Several offline collateral files/directories: the first that has the quote's (TEE, FMSPC, CA)."""

    def __init__(self, sources: Sequence[CollateralSource]) -> None:
        self.sources = list(sources)

    def get(self, quote: Any, *, now: int) -> Any:
        misses = []
        for s in self.sources:
            try:
                return s.get(quote, now=now)
            except CollateralUnavailable as exc:
                misses.append(str(exc))
        raise CollateralUnavailable("; ".join(misses) or "no collateral source")


class KeyBroker:
    """The decision side of the broker, independent of sockets (tests drive it directly too).

    Args:
        policy: the :class:`PolicyHolder` (policy in force, reloads).
        collateral: DCAP collateral source, or ``None`` (then only SIMULATED quotes can pass).
        audit: the hash-chained audit log (``None``: no audit, for benchmarks of the bare path only).
        rate_limiter: per-peer-address token buckets (``None``: unlimited).
        metrics: Prometheus metrics (``None``: none).
        clock: Unix time source (tests pin it).
    """

    def __init__(
        self,
        policy: PolicyHolder,
        *,
        collateral: CollateralSource | None,
        audit: AuditLog | None,
        rate_limiter: RateLimiter | None = None,
        metrics: BrokerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        max_named_requests: int = MAX_NAMED_REQUESTS,
    ) -> None:
        self.policy = policy
        # Called from several sessions' threads at once: the caching source locks per platform.
        self.collateral = collateral
        self.audit = audit
        self.rate_limiter = rate_limiter
        self.metrics = metrics
        self.clock = clock
        self.max_named_requests = max_named_requests
        self._local = threading.local()

    @property
    def default_secret(self) -> str:
        return self.policy.default_secret

    # -- recording ---------------------------------------------------------------------------------

    def record(self, decision: Decision, peer: str) -> bool:
        """Log, audit and count ``decision``. Returns False if the audit could not be written."""
        line = decision.log_line(peer)
        if decision.released:
            log.info(line)
        else:
            log.warning(line)
        ok = True
        if self.audit is not None:
            try:
                self.audit.append(decision.audit_record(peer, self.clock()))
            except Exception as exc:  # noqa: BLE001 - a release that cannot be audited does not happen
                log.error("%s: audit append failed (%s: %s); the attempt is denied",
                          peer, type(exc).__name__, exc)  # fmt: skip
                ok = False
        if self.metrics is not None:
            released = decision.released and ok
            self.metrics.attempts.labels(
                decision="released" if released else "denied",
                reason=decision.category if ok else "internal",
                tee=decision.tee,
            ).inc()
        return ok

    def _release(self, decision: Decision, peer: str, policy: Policy) -> bytes | None:
        """Read the secret of an accepted decision (from the policy it was judged by), record, return it."""
        secret: bytes | None = None
        if decision.released:
            try:
                secret = read_secret(policy, decision.secret)
            except PolicyError as exc:
                decision = dataclasses.replace(decision, released=False, category="secret_unavailable",
                                               reason=str(exc))  # fmt: skip
        if not self.record(decision, peer):
            return None
        return secret if decision.released else None

    # -- the provisioning server's callbacks ---------------------------------------------------------

    def begin_session(self) -> None:
        self._local.handled = False
        self._local.verified = None

    def authorize(self, cert_der: bytes, peer: tuple[str, int]) -> bytes | None:
        """``ProvisionServer``'s callback: the default secret for an accepted client, else None."""
        self._local.handled = True
        self._local.verified = None
        where = f"{peer[0]}:{peer[1]}"
        name = self.default_secret
        if self.rate_limiter is not None and not self.rate_limiter.allow(peer[0]):
            rl = self.rate_limiter
            self.record(denial(name, "rate_limited", f"rate limit: more than {rl.burst} attempts at once or "
                                                     f"{rl.rate}/s from {peer[0]}"), where)  # fmt: skip
            return None
        started = time.perf_counter()
        policy = self.policy.policy  # one snapshot per decision: a reload cannot split it
        now = int(self.clock())
        decision = decide_certificate(cert_der, name, policy=policy, collateral=self.collateral, now=now)
        if self.metrics is not None:
            self.metrics.verification_seconds.labels(tee=decision.tee).observe(time.perf_counter() - started)
        secret = self._release(decision, where, policy)
        if secret is not None:
            self._local.verified = decision.verified
        return secret

    def on_provisioned(self, session: ServerSession) -> None:
        """``ProvisionServer``'s message-4 callback: serve named-secret requests on the attested session."""
        verified = getattr(self._local, "verified", None)
        if verified is None:
            return
        where = f"{session.peer[0]}:{session.peer[1]}"
        parser = RequestParser()
        served = 0
        try:
            deadline = session.deadline()  # for the whole of the next request, however it is cut up
            while True:
                data = session.receive(deadline)
                if not data:
                    return
                names = parser.feed(data)
                if names:
                    deadline = session.deadline()
                for name in names:
                    served += 1
                    if served > self.max_named_requests:
                        raise ExtensionProtocolError(f"more than {self.max_named_requests} named requests")
                    policy = self.policy.policy
                    decision = judge(policy, verified, name, now=int(self.clock()))
                    secret = self._release(decision, where, policy)
                    session.send(encode_response(secret))
        except ExtensionProtocolError as exc:
            d = Decision(
                "-", False, "protocol", f"named-secret extension: {exc}", "extension", verified.tee.value,
                verified.simulated, {}, verified.tcb_status, tuple(verified.advisory_ids),
            )  # fmt: skip
            self.record(d, where)
        except Exception as exc:  # noqa: BLE001 - idle timeout, reset: the session just ends
            log.info("%s: session ended after %d named request(s): %s", where, served, type(exc).__name__)
        finally:
            self._local.verified = None

    def session_failed(self, peer: tuple[str, int], exc: BaseException, cert_der: bytes | None) -> None:
        """A session that ended before ``authorize`` ran (bad magic, timeout, ...): audit it as denied."""
        if getattr(self._local, "handled", True):
            return
        self._local.handled = True
        text = str(exc)
        if text == "server stopping":
            return
        kind = type(exc).__name__
        if kind == "_Deadline":
            category = "timeout"
            reason = "no complete request within the session timeout (slow or silent client)"
        elif isinstance(exc, ProtocolError) or kind == "_Dropped":
            category, reason = "protocol", f"malformed or missing request: {text}"
        else:
            category, reason = "protocol", f"connection error before the request: {kind}: {text}"
        quote = None
        if cert_der is not None:
            try:
                quote = ratls.extract_quote(cert_der)
            except Exception:  # noqa: BLE001
                quote = None
        self.record(denial(self.default_secret, category, reason, quote=quote), f"{peer[0]}:{peer[1]}")

    # -- assembly ----------------------------------------------------------------------------------

    def server(
        self,
        host: str,
        port: int,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        **options: Any,
    ) -> BrokerServer:
        """A :class:`BrokerServer` (not started) serving this broker on ``host:port``."""
        return BrokerServer(self, host, port, cert_path, key_path, **options)


class BrokerServer(ProvisionServer):
    """``ProvisionServer`` with the broker's callbacks, the active-session gauge and audit of
    sessions that fail before a request (wrong magic, oversize or truncated request, slow client)."""

    def __init__(
        self,
        broker: KeyBroker,
        host: str,
        port: int,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        **options: Any,
    ) -> None:
        super().__init__(
            host, port, cert_path, key_path, broker.authorize, on_provisioned=broker.on_provisioned, **options
        )
        self.broker = broker

    # The two overrides below wrap ProvisionServer's per-session methods (no public hook exists yet).
    def _session(self, sock: Any, peer: tuple[str, int]) -> None:
        # (TCP_NODELAY is set by ProvisionServer._session itself.)
        m = self.broker.metrics
        if m is not None:
            m.active_connections.inc()
        try:
            super()._session(sock, peer)
        finally:
            if m is not None:
                m.active_connections.dec()

    def _serve(self, tls: Any, peer: tuple[str, int], where: str) -> None:
        self.broker.begin_session()
        try:
            super()._serve(tls, peer, where)
        except Exception as exc:
            cert_der = None
            try:
                from cryptography.hazmat.primitives import serialization

                cert = tls.get_peer_certificate(as_cryptography=True)
                cert_der = cert.public_bytes(serialization.Encoding.DER) if cert is not None else None
            except Exception:  # noqa: BLE001
                pass
            self.broker.session_failed(peer, exc, cert_der)
            raise
