"""The key broker (model owner's side) and the TEE side of key release.

Broker side::

    holder = PolicyHolder("policy.toml", have_collateral=True)          # fails closed on a bad policy
    broker = KeyBroker(holder, collateral=FileCollateralSource("coll.json"), audit=AuditLog("audit.db"),
                       rate_limiter=RateLimiter(2, 10), metrics=BrokerMetrics())
    broker.server("0.0.0.0", 4433, "broker.pem", "broker.key").serve_forever()

TEE side::

    secrets = await obtain_secrets(tee="sim", broker="broker.example:4433", broker_ca="ca.pem",
                                   secrets=("default", "model-key"), sim_key="sim/sim_attest_key.pem")

``decide_certificate`` / ``decide_quote`` are the broker's decision function without sockets.
The wire extension for named secrets, the audit and the metrics are described in ``docs/broker.md``.
Errors: see ``_errors``.
"""

from __future__ import annotations

from ._audit import GENESIS, AuditChainBroken, AuditLog, AuditRecord
from ._broker import BrokerServer, KeyBroker, LockedCollateralSource, MultiCollateralSource
from ._decide import CATEGORIES, Decision, decide_certificate, decide_quote, judge
from ._errors import (
    BrokerConfigError,
    BrokerError,
    BrokerUnreachable,
    ExtensionProtocolError,
    KeyReleaseDenied,
)
from ._extension import EXT_REQUEST_MAGIC, RequestParser, ResponseParser, encode_request, encode_response
from ._metrics import BrokerMetrics
from ._obtain import obtain_from_env, obtain_secrets
from ._policy_state import DEFAULT_SECRET, PolicyHolder, validate_policy
from ._ratelimit import RateLimiter

__all__ = [
    "CATEGORIES",
    "DEFAULT_SECRET",
    "EXT_REQUEST_MAGIC",
    "GENESIS",
    "AuditChainBroken",
    "AuditLog",
    "AuditRecord",
    "BrokerConfigError",
    "BrokerError",
    "BrokerMetrics",
    "BrokerServer",
    "BrokerUnreachable",
    "Decision",
    "ExtensionProtocolError",
    "KeyBroker",
    "KeyReleaseDenied",
    "LockedCollateralSource",
    "MultiCollateralSource",
    "PolicyHolder",
    "RateLimiter",
    "RequestParser",
    "ResponseParser",
    "decide_certificate",
    "decide_quote",
    "encode_request",
    "encode_response",
    "judge",
    "obtain_from_env",
    "obtain_secrets",
    "validate_policy",
]
