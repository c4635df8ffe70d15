"""The exceptions of ``teeserve.broker``.

The broker side (config, audit) and the TEE side (obtaining secrets) share one tree::

    TeeserveError
    └── BrokerError
        ├── BrokerConfigError (also UsageError)   bad flags or files at broker start (exit 2)
        ├── AuditChainBroken(seq)                 the audit table does not verify (``_audit``)
        ├── ExtensionProtocolError                a named-secret request/response broke the framing
        ├── KeyReleaseDenied(secret)              the broker refused (exit 3; never retried)
        └── BrokerUnreachable                     no broker answered before the deadline

Policy errors at start or reload are ``teeserve.attest.PolicyInvalid`` (exit 2); messages never
contain secret bytes.
"""

from __future__ import annotations

from .._errors import TeeserveError, UsageError

__all__ = [
    "BrokerError",
    "BrokerConfigError",
    "ExtensionProtocolError",
    "KeyReleaseDenied",
    "BrokerUnreachable",
]


class BrokerError(TeeserveError):
    """Root of every error raised by ``teeserve.broker``."""


class BrokerConfigError(BrokerError, UsageError):
    """The broker cannot start with these options or files (the message names which)."""


class ExtensionProtocolError(BrokerError):
    """Bytes of the named-secret extension (docs/broker.md) that do not follow its framing."""


class KeyReleaseDenied(BrokerError):
    """The broker refused to release ``secret`` (attestation or policy); retrying will not help.

    The broker tells a refused client nothing more; the reason is in the broker's log and audit.
    """

    exit_code = 3

    def __init__(self, secret: str, detail: str = "") -> None:
        self.secret = secret
        msg = f"the key broker refused to release secret {secret!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class BrokerUnreachable(BrokerError):
    """The broker could not be reached (connection refused or timed out) before the deadline."""
