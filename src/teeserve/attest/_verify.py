"""The one entry point the broker uses: evidence bytes in, a :class:`VerifiedQuote` (or an error) out.

Strategy: route by the QE vendor id. A SIMULATED quote goes to ``sim.verify_quote`` and is accepted
only against explicitly trusted simulation keys; everything else is parsed and DCAP-verified with
collateral from the given source. Time is injected (``now``) so tests and audits are reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from . import sim
from ._collateral import CollateralSource
from ._dcap import verify_dcap
from ._errors import CollateralUnavailable, SimulationNotAllowed
from ._pck_chain import check_pck_chain
from ._quote import parse_quote
from ._verified import VerifiedQuote

__all__ = ["verify_evidence"]


def verify_evidence(
    raw_quote: bytes,
    *,
    collateral: CollateralSource | None,
    sim_keys: Sequence[Any] = (),
    now: int | None = None,
) -> VerifiedQuote:
    """Verify a quote the way the key broker does (policy is a separate step: ``Policy.evaluate``).

    Args:
        raw_quote: the binary quote (SGX v3, TDX v4/v5, or a SIMULATED quote).
        collateral: where DCAP collateral comes from; ``None`` when only simulated quotes are expected.
        sim_keys: trusted simulation public keys; empty means SIMULATED quotes are refused.
        now: Unix seconds (default: the clock).

    Raises:
        MalformedQuote, UnsupportedQuoteVersion: not a quote we read.
        SimulationNotAllowed: a SIMULATED quote and no trusted simulation key.
        QuoteVerificationFailed (and subclasses): the quote cannot be trusted.
        CollateralUnavailable, CollateralExpired, CollateralInvalid: no usable collateral.
    """
    if now is None:
        now = int(time.time())
    if sim.is_simulated(raw_quote):
        if not sim_keys:
            raise SimulationNotAllowed("SIMULATED quote, and no simulation key is trusted here")
        return sim.verify_quote(raw_quote, sim_keys, now=now)
    quote = parse_quote(raw_quote)
    if collateral is None:
        raise CollateralUnavailable("no collateral source configured (use a collateral file or a PCCS)")
    chain = quote.signature_data.pck_chain_pem()
    if chain:  # before the collateral lookup: its FMSPC comes from this chain (attest/_pck_chain.py)
        check_pck_chain(chain)
    return verify_dcap(quote.raw, collateral.get(quote, now=now), now=now, quote=quote)
