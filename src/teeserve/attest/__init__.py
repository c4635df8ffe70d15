"""Attestation: quotes, DCAP verification, collateral, key-release policy and the simulated TEE.

The recipes a caller needs (the rest lives in ``_`` modules)::

    quote = parse_quote(raw)                                   # SGX v3 / TDX v4, v5 → dataclasses
    verified = verify_evidence(raw, collateral=FileCollateralSource("coll.json"),
                               sim_keys=policy.sim_keys, now=now)   # DCAP or SIMULATED
    verdict = policy.evaluate(verified, "model-key", now=now)  # every failed rule
    verdict.raise_for_violations()

Sub-packages owned elsewhere: ``attest.ratls`` (RA-TLS certificates) and ``attest.evidence``
(evidence providers). ``attest.sim`` is the simulated TEE. Errors: see ``_errors``.

Imports are lazy (PEP 562): the errors load with the package, every other name (and ``sim``) on
first use, so an attesting server that needs only ``ratls`` and ``evidence`` does not load the
verifier's policy loader, DCAP, PCCS client and describers.
"""

from __future__ import annotations

import typing as _typing  # aliased: the public names are exactly __all__

from .._lazy import lazy_exports as _lazy_exports
from ._errors import (
    AttestError,
    CollateralError,
    CollateralExpired,
    CollateralInvalid,
    CollateralUnavailable,
    MalformedQuote,
    PolicyError,
    PolicyInvalid,
    PolicyViolation,
    QuoteError,
    QuoteSignatureInvalid,
    QuoteVerificationFailed,
    SimulationKeyInvalid,
    SimulationNotAllowed,
    UnknownSecret,
    UnsupportedQuoteVersion,
    UntrustedSimulationKey,
)

if _typing.TYPE_CHECKING:  # the lazily loaded names, for type checkers and editors
    from . import sim
    from ._collateral import Collateral, CollateralSource, DictCollateralSource, FileCollateralSource
    from ._dcap import verify_dcap
    from ._describe import describe_quote, describe_verdict, describe_verified, format_quote
    from ._pccs import CachingCollateralSource, PccsClient
    from ._policy import (
        Policy,
        SecretPolicy,
        SgxIdentity,
        TdxIdentity,
        Verdict,
        encode_secret,
        evaluate,
        read_secret,
    )
    from ._policy_load import load_policy, parse_policy, parse_ra_config
    from ._quote import (
        CertificationData,
        Quote,
        QuoteHeader,
        SgxFlags,
        SgxReportBody,
        SignatureData,
        TdAttributes,
        TdReport,
        decode_quote_bytes,
        parse_quote,
    )
    from ._verified import TeeKind, VerifiedQuote
    from ._verify import verify_evidence

#: name -> the module that defines it, imported on first access (see ``__getattr__``); ``sim`` is
#: module -> the names it defines, imported on first access (teeserve._lazy)
_LAZY: dict[str, tuple[str, ...]] = {
    "_collateral": ("Collateral", "CollateralSource", "DictCollateralSource", "FileCollateralSource"),
    "_dcap": ("verify_dcap",),
    "_describe": ("describe_quote", "describe_verdict", "describe_verified", "format_quote"),
    "_pccs": ("CachingCollateralSource", "PccsClient"),
    "_policy": ("Policy", "SecretPolicy", "SgxIdentity", "TdxIdentity", "Verdict", "encode_secret",
        "evaluate", "read_secret"),
    "_policy_load": ("load_policy", "parse_policy", "parse_ra_config"),
    "_quote": ("CertificationData", "Quote", "QuoteHeader", "SgxFlags", "SgxReportBody",
        "SignatureData", "TdAttributes", "TdReport", "decode_quote_bytes", "parse_quote"),
    "_verified": ("TeeKind", "VerifiedQuote"),
    "_verify": ("verify_evidence",),
}

__all__ = [
    "AttestError",
    "CachingCollateralSource",
    "CertificationData",
    "Collateral",
    "CollateralError",
    "CollateralExpired",
    "CollateralInvalid",
    "CollateralSource",
    "CollateralUnavailable",
    "DictCollateralSource",
    "FileCollateralSource",
    "MalformedQuote",
    "PccsClient",
    "Policy",
    "PolicyError",
    "PolicyInvalid",
    "PolicyViolation",
    "Quote",
    "QuoteError",
    "QuoteHeader",
    "QuoteSignatureInvalid",
    "QuoteVerificationFailed",
    "SecretPolicy",
    "SgxFlags",
    "SgxIdentity",
    "SgxReportBody",
    "SignatureData",
    "SimulationKeyInvalid",
    "SimulationNotAllowed",
    "TdAttributes",
    "TdReport",
    "TdxIdentity",
    "TeeKind",
    "UnknownSecret",
    "UnsupportedQuoteVersion",
    "UntrustedSimulationKey",
    "Verdict",
    "VerifiedQuote",
    "decode_quote_bytes",
    "describe_quote",
    "describe_verdict",
    "describe_verified",
    "encode_secret",
    "evaluate",
    "format_quote",
    "load_policy",
    "parse_policy",
    "parse_quote",
    "parse_ra_config",
    "read_secret",
    "sim",
    "verify_dcap",
    "verify_evidence",
]


__getattr__, __dir__ = _lazy_exports(globals(), _LAZY, submodules=("sim",))
