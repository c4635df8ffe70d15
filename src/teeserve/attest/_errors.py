"""The exceptions of ``teeserve.attest``.

Two questions are kept apart: "can this quote be trusted at all?" (parsing, signatures, collateral)
and "is this trusted quote allowed to have this secret?" (policy). The first kind means the evidence
is worthless; the second means it is genuine but does not match what the owner allows::

    TeeserveError
    └── AttestError
        ├── QuoteError                      the bytes are not a quote we can read
        │   ├── MalformedQuote(offset, field)
        │   └── UnsupportedQuoteVersion(version, detail)
        ├── QuoteVerificationFailed(reason) cannot trust this quote
        │   ├── QuoteSignatureInvalid       (simulated quotes: bad ECDSA signature)
        │   ├── UntrustedSimulationKey      (simulated quotes: key not in the trusted set)
        │   └── SimulationNotAllowed        (a simulated quote where none is accepted)
        ├── SimulationKeyInvalid            a simulation key file cannot be used
        ├── CollateralError                 no usable collateral
        │   ├── CollateralUnavailable       not found / PCCS unreachable and nothing cached
        │   ├── CollateralExpired           only expired collateral is left: fail closed
        │   └── CollateralInvalid           a collateral file or PCCS answer is not valid
        └── PolicyError
            ├── PolicyInvalid (also UsageError)  the policy file is empty, malformed or has unknown keys
            ├── UnknownSecret               the policy names no such secret
            └── PolicyViolation(rule, expected, actual)  trusted, but not allowed
"""

from __future__ import annotations

from typing import Any

from .._errors import TeeserveError, UsageError

__all__ = [
    "AttestError",
    "QuoteError",
    "MalformedQuote",
    "UnsupportedQuoteVersion",
    "QuoteVerificationFailed",
    "QuoteSignatureInvalid",
    "UntrustedSimulationKey",
    "SimulationNotAllowed",
    "SimulationKeyInvalid",
    "CollateralError",
    "CollateralUnavailable",
    "CollateralExpired",
    "CollateralInvalid",
    "PolicyError",
    "PolicyInvalid",
    "UnknownSecret",
    "PolicyViolation",
]


class AttestError(TeeserveError):
    """Root of every error raised by ``teeserve.attest``."""


class QuoteError(AttestError):
    """The input is not a quote this parser can read."""


class MalformedQuote(QuoteError):
    """The quote bytes are truncated or inconsistent at ``offset`` while reading ``field``."""

    def __init__(self, offset: int, field: str, detail: str = "") -> None:
        self.offset = offset
        self.field = field
        self.detail = detail
        msg = f"malformed quote: {field} at offset {offset}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class UnsupportedQuoteVersion(QuoteError):
    """A well-formed header that names a quote version, TEE type or key type we do not support."""

    def __init__(self, version: int, detail: str = "") -> None:
        self.version = version
        self.detail = detail
        msg = f"unsupported quote version {version}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class QuoteVerificationFailed(AttestError):
    """The quote cannot be trusted; ``reason`` is the verifier's wording (dcap-qvl's for DCAP)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"quote verification failed: {reason}")


class QuoteSignatureInvalid(QuoteVerificationFailed):
    """The quote's signature does not verify under its attestation key."""


class UntrustedSimulationKey(QuoteVerificationFailed):
    """A SIMULATED quote signed by a key that is not in the trusted set."""


class SimulationNotAllowed(QuoteVerificationFailed):
    """A SIMULATED quote was presented where no simulation key is trusted."""


class SimulationKeyInvalid(AttestError):
    """A simulation key file is missing, unreadable or not an EC P-256 key."""


class CollateralError(AttestError):
    """No usable collateral (TCB info, QE identity, CRLs) for a quote."""


class CollateralUnavailable(CollateralError):
    """No collateral could be found or fetched (and nothing usable is cached)."""


class CollateralExpired(CollateralError):
    """The only collateral left has passed its ``nextUpdate``: fail closed."""


class CollateralInvalid(CollateralError):
    """A collateral file or PCCS response is malformed."""


class PolicyError(AttestError):
    """Base of the policy errors."""


class PolicyInvalid(PolicyError, UsageError):
    """The policy file is missing, empty, malformed or names an unknown key. Names the file and key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"invalid policy {where}: {problem}")


class UnknownSecret(PolicyError):
    """The policy has no secret of that name (a distinct denial: think HTTP 404)."""

    exit_code = 4

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"policy has no secret named {name!r}")


class PolicyViolation(PolicyError):
    """The quote is genuine but breaks policy ``rule`` (think HTTP 403)."""

    exit_code = 3

    def __init__(self, rule: str, expected: Any, actual: Any) -> None:
        self.rule = rule
        self.expected = expected
        self.actual = actual
        super().__init__(f"policy rule {rule}: expected {expected}, got {actual}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyViolation):
            return NotImplemented
        return (self.rule, self.expected, self.actual) == (other.rule, other.expected, other.actual)

    def __hash__(self) -> int:
        return hash((self.rule, str(self.expected), str(self.actual)))

    def __repr__(self) -> str:
        return f"PolicyViolation(rule={self.rule!r}, expected={self.expected!r}, actual={self.actual!r})"
