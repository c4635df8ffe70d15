"""DCAP verification of SGX/TDX quotes with dcap-qvl 0.7.0 (dcap-attestation.md §2, §5 A–B).

Strategy: dcap-qvl does the cryptography and the collateral checks (chains, CRLs, signatures, QE
identity, TCB level, debug and TD attribute checks) and returns a TCB status; nothing of it is
re-implemented here. This module only maps its errors into :class:`QuoteVerificationFailed` (keeping
dcap-qvl's wording as ``reason``, so the manifest's error substrings still match) and packs the
outcome with our own parse of the same bytes into a :class:`VerifiedQuote`. Accepting a TCB status
is the policy's job: ``verify`` returns success for every status except ``Revoked``.
"""

from __future__ import annotations

import time

from ._collateral import Collateral
from ._errors import QuoteVerificationFailed
from ._quote import Quote, parse_quote
from ._verified import TeeKind, VerifiedQuote

__all__ = ["verify_dcap"]

_PREFIX = "Verification failed: "


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith(_PREFIX):
        text = text[len(_PREFIX) :]
    # dcap-qvl appends an anyhow "Caused by:" block; keep it, on one line
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def verify_dcap(
    raw_quote: bytes,
    collateral: Collateral,
    *,
    now: int | None = None,
    quote: Quote | None = None,
    root_ca_der: bytes | None = None,
) -> VerifiedQuote:
    """Verify a DCAP quote against ``collateral`` at ``now`` (Unix seconds; default: the clock).

    ``root_ca_der`` pins another root than the Intel SGX Root CA built into dcap-qvl (tests only).

    Raises:
        MalformedQuote, UnsupportedQuoteVersion: the bytes are not a quote we read.
        QuoteVerificationFailed: dcap-qvl rejected it (``reason`` is its message without the prefix).
    """
    if now is None:
        now = int(time.time())
    if quote is None:
        quote = parse_quote(raw_quote)
    if quote.simulated:
        raise QuoteVerificationFailed("a SIMULATED quote cannot be DCAP-verified")
    import dcap_qvl

    try:
        if root_ca_der is None:
            result = dcap_qvl.verify(quote.raw, collateral.dcap, int(now))
        else:
            result = dcap_qvl.verify_with_root_ca(quote.raw, collateral.dcap, root_ca_der, int(now))
    except Exception as exc:  # dcap-qvl raises ValueError; anything else from it is still "not trusted"
        raise QuoteVerificationFailed(_reason(exc)) from exc
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException (a BaseException)
        if type(exc).__name__ == "PanicException":
            raise QuoteVerificationFailed(f"dcap-qvl panicked: {_reason(exc)}") from exc
        raise
    tee = TeeKind.TDX if quote.tee == "tdx" else TeeKind.SGX
    return VerifiedQuote(
        tee=tee,
        simulated=False,
        tcb_status=str(result.status),
        advisory_ids=tuple(str(a) for a in result.advisory_ids),
        quote=quote,
        collateral_expiry=collateral.next_update,
        verified_at=int(now),
    )

