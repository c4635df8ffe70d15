"""The broker's decision: RA-TLS certificate (or bare quote) + secret name + time → :class:`Decision`.

Strategy: pure functions over the attest engineer's pieces, no sockets and no files (the policy and
the collateral source are passed in), so the same code judges a live RA-TLS session and a recorded
DCAP vector with the manifest's time. The order is fixed (issue 4 §4):
``ratls.verify_certificate`` (key binding, DICE ``pubkey-hash`` required) → ``attest.verify_evidence``
(DCAP with collateral, or SIMULATED against the policy's trusted simulation keys) →
``Policy.evaluate`` (every failed rule). A :class:`Decision` is what the log, the audit and the
metrics are made of; it never holds secret bytes (reading the secret is the caller's job, after a
release decision).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..attest import (
    CollateralError,
    CollateralSource,
    Policy,
    QuoteError,
    QuoteVerificationFailed,
    SimulationNotAllowed,
    UnknownSecret,
    UntrustedSimulationKey,
    VerifiedQuote,
    parse_quote,
    verify_evidence,
)
from ..attest import ratls
from ..attest._quote import Quote, SgxReportBody
from ._audit import AuditRecord

__all__ = [
    "CATEGORIES",
    "Decision",
    "denial",
    "judge",
    "decide_quote",
    "decide_certificate",
    "measurements_of",
]

#: reason categories (the ``reason`` label of the attempts metric); "released" is the only good one
CATEGORIES = (
    "released",
    "rate_limited",
    "certificate",
    "quote",
    "simulation",
    "collateral",
    "tcb",
    "policy",
    "unknown_secret",
    "secret_unavailable",
    "protocol",
    "timeout",
    "internal",
)


@dataclass(frozen=True)
class Decision:
    """One release decision: released or denied, why (every failed rule), and what was attested."""

    secret: str
    released: bool
    category: str
    reason: str
    rule: str
    tee: str = "unknown"  # "sgx" | "tdx" | "sim" | "unknown" (the only metric label about the TEE)
    simulated: bool = False
    measurements: Mapping[str, Any] = field(default_factory=dict)
    tcb_status: str = "-"
    advisories: tuple[str, ...] = ()
    verified: VerifiedQuote | None = field(default=None, repr=False, compare=False)

    def log_line(self, peer: str) -> str:
        """The local log line: decision, secret, TEE, measurements, every failed rule."""
        sim = " SIMULATED" if self.simulated else ""
        meas = " ".join(f"{k}={v}" for k, v in self.measurements.items() if k != "verified")
        if self.measurements and not self.measurements.get("verified", True):
            meas += " (unverified)"
        what = "released" if self.released else f"DENIED ({self.category})"
        tail = f"rule {self.rule}" if self.released else self.reason
        return (
            f"{peer}: secret {self.secret!r} {what}{sim}: tee={self.tee}{sim} {meas} "
            f"tcb_status={self.tcb_status} advisories={','.join(self.advisories) or '-'}: {tail}"
        )

    def audit_record(self, peer: str, now: float | None = None) -> AuditRecord:
        sim = " (SIMULATED)" if self.simulated else ""
        reason = self.reason if not self.released else ("released" + sim)
        if self.simulated and "SIMULATED" not in reason:
            reason = f"{reason} (SIMULATED)"
        return AuditRecord(
            peer=peer,
            tee=f"{self.tee}{sim}",
            simulated=self.simulated,
            measurements=dict(self.measurements),
            tcb_status=f"{self.tcb_status}{sim}",
            advisories=tuple(self.advisories),
            secret=self.secret,
            rule=self.rule,
            decision="released" if self.released else "denied",
            reason=reason,
            time=time.time() if now is None else now,
        )


def measurements_of(quote: Quote, *, verified: bool) -> dict[str, Any]:
    """The identity fields an operator audits (hex), flagged with whether the quote was verified."""
    body = quote.body
    out: dict[str, Any] = {"verified": verified}
    if isinstance(body, SgxReportBody):
        out.update(
            mr_enclave=body.mr_enclave.hex(),
            mr_signer=body.mr_signer.hex(),
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            attributes=",".join(body.flag_names) or "none",
        )
    else:
        out.update(
            mr_td=body.mr_td.hex(),
            rtmr0=body.rtmr0.hex(),
            rtmr1=body.rtmr1.hex(),
            rtmr2=body.rtmr2.hex(),
            rtmr3=body.rtmr3.hex(),
            td_attributes=",".join(body.td_attribute_names) or "none",
            xfam=f"0x{body.xfam:016x}",
        )
    if quote.fmspc:
        out["fmspc"] = quote.fmspc
    return out


def _tee_of_quote(quote: Quote) -> str:
    return "sim" if quote.simulated else quote.tee


def denial(
    secret: str, category: str, reason: str, *, quote: bytes | None = None, rule: str = "-"
) -> Decision:
    """A denial before (or without) a verified quote; ``quote`` (unverified) is parsed for the audit."""
    tee, simulated, meas = "unknown", False, {}
    if quote is not None:
        try:
            parsed = parse_quote(quote)
        except Exception:  # noqa: BLE001 - unreadable evidence is recorded as such
            pass
        else:
            tee, simulated = _tee_of_quote(parsed), parsed.simulated
            meas = measurements_of(parsed, verified=False)
    if simulated and "SIMULATED" not in reason:
        reason = f"SIMULATED quote: {reason}"
    return Decision(secret, False, category, reason, rule, tee, simulated, meas)


def _category(rules: list[str]) -> str:
    for prefix, cat in (("simulation", "simulation"), ("collateral", "collateral"),
                        ("tcb_status", "tcb"), ("advisories", "tcb")):  # fmt: skip
        if any(r == prefix or r.startswith(prefix + ".") for r in rules):
            return cat
    return "policy"


def _matched_rule(policy: Policy, verified: VerifiedQuote, secret: str) -> str:
    sp = policy.secret(secret)
    body = verified.quote.body
    if verified.td is not None:
        kind, entries = "tdx", sp.tdx
        for i, ident in enumerate(entries):
            if not ident.mismatches(verified.td):
                return f"secrets.{secret}.{kind}[{i}]"
        return f"secrets.{secret}.{kind}"
    kind, entries = ("sim", sp.sim) if verified.simulated else ("sgx", sp.sgx)
    assert isinstance(body, SgxReportBody)
    for i, ident in enumerate(entries):
        if not ident.mismatches(body, kind):
            return f"secrets.{secret}.{kind}[{i}]"
    return f"secrets.{secret}.{kind}"


def judge(policy: Policy, verified: VerifiedQuote, secret: str, *, now: int) -> Decision:
    """Apply ``secret``'s rules to a verified quote at ``now`` (every failed rule is in the reason)."""
    tee = verified.tee.value
    meas = measurements_of(verified.quote, verified=True)
    base = dict(tee=tee, simulated=verified.simulated, measurements=meas, tcb_status=verified.tcb_status,
                advisories=tuple(verified.advisory_ids), verified=verified)  # fmt: skip
    try:
        verdict = policy.evaluate(verified, secret, now=now)
    except UnknownSecret as exc:
        return Decision(secret, False, "unknown_secret", str(exc), "-", **base)  # type: ignore[arg-type]
    if verdict.accepted:
        sim = " (SIMULATED)" if verified.simulated else ""
        rule = _matched_rule(policy, verified, secret)
        return Decision(secret, True, "released", f"accepted{sim}", rule, **base)  # type: ignore[arg-type]
    rules = [v.rule for v in verdict.violations]
    category = _category(rules)
    return Decision(secret, False, category, str(verdict), ",".join(rules), **base)  # type: ignore[arg-type]


def verify_quote_for(
    raw_quote: bytes, policy: Policy, collateral: CollateralSource | None, now: int
) -> VerifiedQuote:
    """``attest.verify_evidence`` with the policy's trusted simulation keys (raises on failure)."""
    return verify_evidence(raw_quote, collateral=collateral, sim_keys=policy.sim_keys, now=now)


_COLLATERAL_WORDS = re.compile(r"expired|issue date is in the future|not yet valid", re.IGNORECASE)


def error_category(exc: BaseException) -> str:
    if isinstance(exc, ratls.RaTlsError):
        return "certificate"
    if isinstance(exc, (SimulationNotAllowed, UntrustedSimulationKey)):
        return "simulation"
    if isinstance(exc, CollateralError):
        return "collateral"
    if isinstance(exc, QuoteVerificationFailed) and _COLLATERAL_WORDS.search(exc.reason):
        return "collateral"  # dcap-qvl's wording for collateral outside its validity window
    if isinstance(exc, (QuoteError, QuoteVerificationFailed)):
        return "quote"
    if isinstance(exc, UnknownSecret):
        return "unknown_secret"
    return "internal"


def decide_quote(
    raw_quote: bytes,
    secret: str,
    *,
    policy: Policy,
    collateral: CollateralSource | None,
    now: int | None = None,
) -> Decision:
    """Verify ``raw_quote`` and judge it for ``secret`` (no key binding: for recorded quotes and tools)."""
    now = int(time.time()) if now is None else int(now)
    try:
        verified = verify_quote_for(raw_quote, policy, collateral, now)
    except Exception as exc:  # noqa: BLE001 - every failure is a denial with its reason
        return denial(secret, error_category(exc), str(exc), quote=raw_quote)
    return judge(policy, verified, secret, now=now)


def decide_certificate(
    cert_der: bytes,
    secret: str,
    *,
    policy: Policy,
    collateral: CollateralSource | None,
    now: int | None = None,
) -> Decision:
    """The full check of an RA-TLS client certificate: key binding, quote verification, policy."""
    try:
        evidence = ratls.verify_certificate(cert_der, require_pubkey_hash=True)
    except Exception as exc:  # noqa: BLE001
        try:
            unverified: bytes | None = ratls.extract_quote(cert_der)
        except Exception:  # noqa: BLE001
            unverified = None
        return denial(secret, "certificate", f"RA-TLS certificate rejected: {exc}", quote=unverified)
    return decide_quote(evidence.quote, secret, policy=policy, collateral=collateral, now=now)
