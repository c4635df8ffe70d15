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

Imports are lazy (PEP 562): the errors load with the package, every other name on first use, so
``teeserve serve`` (which needs only ``obtain_secrets``) does not load the broker's audit (SQLite),
metrics, policy loader or pyOpenSSL server.
"""

from __future__ import annotations

import typing as _typing  # aliased: the public names are exactly __all__

from .._lazy import lazy_exports as _lazy_exports
from ._errors import (
    BrokerConfigError,
    BrokerError,
    BrokerUnreachable,
    ExtensionProtocolError,
    KeyReleaseDenied,
)

if _typing.TYPE_CHECKING:  # the lazily loaded names, for type checkers and editors
    from ._audit import GENESIS, AuditChainBroken, AuditLog, AuditRecord
    from ._broker import BrokerServer, KeyBroker, LockedCollateralSource, MultiCollateralSource
    from ._decide import CATEGORIES, Decision, decide_certificate, decide_quote, judge
    from ._extension import (
        DEFAULT_SECRET,
        EXT_REQUEST_MAGIC,
        RequestParser,
        ResponseParser,
        encode_request,
        encode_response,
    )
    from ._metrics import BrokerMetrics
    from ._obtain import obtain_from_env, obtain_secrets
    from ._policy_state import PolicyHolder, validate_policy
    from ._ratelimit import RateLimiter

#: module -> the names it defines, imported on first access (teeserve._lazy)
_LAZY: dict[str, tuple[str, ...]] = {
    "_audit": ("GENESIS", "AuditChainBroken", "AuditLog", "AuditRecord"),
    "_broker": ("BrokerServer", "KeyBroker", "LockedCollateralSource", "MultiCollateralSource"),
    "_decide": ("CATEGORIES", "Decision", "decide_certificate", "decide_quote", "judge"),
    "_extension": ("DEFAULT_SECRET", "EXT_REQUEST_MAGIC", "RequestParser", "ResponseParser",
        "encode_request", "encode_response"),
    "_metrics": ("BrokerMetrics",),
    "_obtain": ("obtain_from_env", "obtain_secrets"),
    "_policy_state": ("PolicyHolder", "validate_policy"),
    "_ratelimit": ("RateLimiter",),
}

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


__getattr__, __dir__ = _lazy_exports(globals(), _LAZY)
