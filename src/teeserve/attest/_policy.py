"""The key-release policy: frozen data, and one pure function that judges a verified quote.

Strategy: a :class:`Policy` names secrets; each :class:`SecretPolicy` says which TEE kinds, which
identities (SGX MRENCLAVE or MRSIGNER + ISV_PROD_ID + minimum ISV_SVN, TDX MRTD/RTMRs, simulated
measurements), which TCB statuses and advisories are acceptable. :func:`evaluate` never stops at the
first problem: the :class:`Verdict` lists every failed rule as a :class:`PolicyViolation` (rule,
expected, actual), so an operator sees the whole picture in one run. Debug enclaves/TDs are always
rejected (there is no switch), and so is collateral past its ``nextUpdate``. Loading and validating
the TOML (and the reference deployment's ``ra_config.json``) is ``_policy_load``'s job; nothing here
does I/O except :func:`read_secret`, which the broker calls after a positive verdict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import PolicyInvalid, PolicyViolation, UnknownSecret
from ._quote import SgxFlags, SgxReportBody, TdAttributes, TdReport
from ._verified import TeeKind, VerifiedQuote

__all__ = [
    "TCB_STATUSES",
    "SECRET_FORMATS",
    "SgxIdentity",
    "TdxIdentity",
    "SecretPolicy",
    "Policy",
    "Verdict",
    "evaluate",
    "encode_secret",
    "read_secret",
]

TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
#: raw: the bytes as they are (a 16-byte wrap key for Gramine >= 1.3's SET_KEY);
#: hex: a 16-byte key sent as 32 hex characters + NUL (Gramine <= 1.2);
#: string: the bytes + NUL (SECRET_PROVISION_SECRET_STRING, at most 4095 bytes).
SECRET_FORMATS = ("raw", "hex", "string")
_MAX_STRING_SECRET = 4095


def _hexes(values: frozenset[bytes] | None) -> Any:
    if values is None:
        return None
    items = sorted(v.hex() for v in values)
    return items[0] if len(items) == 1 else items


@dataclass(frozen=True)
class SgxIdentity:
    """One accepted SGX (or simulated) identity; every field that is set must match.

    ``mr_enclave`` / ``mr_signer`` are sets of accepted values; ``min_isv_svn`` is a minimum (a newer
    enclave version is accepted, never compared by equality).
    """

    mr_enclave: frozenset[bytes] | None = None
    mr_signer: frozenset[bytes] | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None

    def mismatches(self, body: SgxReportBody, prefix: str) -> list[PolicyViolation]:
        out = []
        if self.mr_enclave is not None and body.mr_enclave not in self.mr_enclave:
            out.append(
                PolicyViolation(f"{prefix}.mr_enclave", _hexes(self.mr_enclave), body.mr_enclave.hex())
            )
        if self.mr_signer is not None and body.mr_signer not in self.mr_signer:
            out.append(PolicyViolation(f"{prefix}.mr_signer", _hexes(self.mr_signer), body.mr_signer.hex()))
        if self.isv_prod_id is not None and body.isv_prod_id != self.isv_prod_id:
            out.append(PolicyViolation(f"{prefix}.isv_prod_id", self.isv_prod_id, body.isv_prod_id))
        if self.min_isv_svn is not None and body.isv_svn < self.min_isv_svn:
            out.append(PolicyViolation(f"{prefix}.isv_svn", f">= {self.min_isv_svn}", body.isv_svn))
        return out


_TDX_FIELDS = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config")


_TDX_WORDS = ("td_attributes", "xfam")


def _u64s(values: frozenset[int]) -> Any:
    items = sorted(f"0x{v:016x}" for v in values)
    return items[0] if len(items) == 1 else items


@dataclass(frozen=True)
class TdxIdentity:
    """One accepted TD identity: ``mr_td`` always, the RTMRs and owner fields when set.

    ``td_attributes`` and ``xfam`` (sets of accepted 64-bit values, compared whole) pin the TD's
    configuration beyond its measurement: the same MRTD can run with PKS, key locker or PERFMON
    enabled, or with a different set of extended CPU features (XFAM: AVX-512, AMX, ...), which the
    always-on DEBUG and SEPT_VE_DISABLE rules do not cover (dcap-attestation.md §5.4, step 7).
    """

    mr_td: frozenset[bytes]
    rtmr0: frozenset[bytes] | None = None
    rtmr1: frozenset[bytes] | None = None
    rtmr2: frozenset[bytes] | None = None
    rtmr3: frozenset[bytes] | None = None
    mr_config_id: frozenset[bytes] | None = None
    mr_owner: frozenset[bytes] | None = None
    mr_owner_config: frozenset[bytes] | None = None
    td_attributes: frozenset[int] | None = None
    xfam: frozenset[int] | None = None

    def mismatches(self, td: TdReport, prefix: str = "tdx") -> list[PolicyViolation]:
        out = []
        for name in _TDX_FIELDS:
            accepted = getattr(self, name)
            actual = getattr(td, name)
            if accepted is not None and actual not in accepted:
                out.append(PolicyViolation(f"{prefix}.{name}", _hexes(accepted), actual.hex()))
        for name in _TDX_WORDS:
            accepted = getattr(self, name)
            actual = getattr(td, name)
            if accepted is not None and actual not in accepted:
                out.append(PolicyViolation(f"{prefix}.{name}", _u64s(accepted), f"0x{actual:016x}"))
        return out


@dataclass(frozen=True)
class SecretPolicy:
    """Where one secret comes from, how it is delivered, and who may have it."""

    name: str
    file: Path
    format: str
    tee: frozenset[str]
    tcb_statuses: frozenset[str] = frozenset({"UpToDate"})
    reject_advisories: frozenset[str] = frozenset()
    allow_simulation: bool = False
    sgx: tuple[SgxIdentity, ...] = ()
    tdx: tuple[TdxIdentity, ...] = ()
    sim: tuple[SgxIdentity, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate`: every failed rule, or none (accepted)."""

    secret: str
    violations: tuple[PolicyViolation, ...]
    simulated: bool = False

    @property
    def accepted(self) -> bool:
        return not self.violations

    def raise_for_violations(self) -> None:
        """The strict path: raise the first :class:`PolicyViolation` (all of them in ``.violations``)."""
        if self.violations:
            first = self.violations[0]
            first.violations = self.violations  # type: ignore[attr-defined]
            raise first

    def __str__(self) -> str:
        sim = " (SIMULATED quote)" if self.simulated else ""
        if self.accepted:
            return f"secret {self.secret!r}: accepted{sim}"
        rules = "; ".join(f"{v.rule}: expected {v.expected}, got {v.actual}" for v in self.violations)
        return f"secret {self.secret!r}: denied{sim}: {rules}"


@dataclass(frozen=True)
class Policy:
    """A loaded policy (see ``docs/policy.md``). ``sim_keys`` are the trusted simulation public keys."""

    source: str
    secrets: Mapping[str, SecretPolicy]
    sim_keys: tuple[Any, ...] = ()
    sim_key_ids: frozenset[bytes] = field(default_factory=frozenset)

    def secret(self, name: str) -> SecretPolicy:
        """The policy of secret ``name``. Raises :class:`UnknownSecret`."""
        try:
            return self.secrets[name]
        except KeyError:
            raise UnknownSecret(name) from None

    def evaluate(
        self, verified: VerifiedQuote, secret_name: str, *, now: int, report_data: bytes | None = None
    ) -> Verdict:
        """Judge ``verified`` for ``secret_name`` at ``now`` (see :func:`evaluate`)."""
        return evaluate(self, verified, secret_name, now=now, report_data=report_data)


def _best(candidates: list[list[PolicyViolation]], rule: str) -> list[PolicyViolation]:
    if not candidates:
        return [PolicyViolation(rule, "an identity entry", "none configured")]
    if any(not c for c in candidates):
        return []
    return min(candidates, key=len)  # the closest entry's failures (ties: the first)


def evaluate(
    policy: Policy, verified: VerifiedQuote, secret_name: str, *, now: int, report_data: bytes | None = None
) -> Verdict:
    """Every rule of ``secret_name``'s policy that ``verified`` breaks at time ``now``.

    ``report_data``, when given, must equal the quote's 64-byte report data (the broker's channel or
    nonce binding).

    Raises:
        UnknownSecret: the policy has no such secret.
    """
    sp = policy.secret(secret_name)
    quote = verified.quote
    body = quote.body
    v: list[PolicyViolation] = []
    kind = verified.tee.value

    if kind not in sp.tee:
        v.append(PolicyViolation("tee", sorted(sp.tee), str(verified.tee)))
    if verified.simulated or verified.tee is TeeKind.SIM or quote.simulated:
        if not sp.allow_simulation:
            v.append(PolicyViolation("simulation", "allow_simulation = true", "a SIMULATED quote"))
        if verified.sim_key_id is None or verified.sim_key_id not in policy.sim_key_ids:
            kid = verified.sim_key_id.hex() if verified.sim_key_id else None
            v.append(PolicyViolation("simulation.key", "a trusted simulation key", kid))
    if body.debug:
        v.append(PolicyViolation("debug", "not a debug enclave/TD (always enforced)", "DEBUG"))
    if isinstance(body, SgxReportBody):
        need = SgxFlags.INIT | SgxFlags.MODE64BIT
        bad = SgxFlags.PROVISION_KEY | SgxFlags.EINITTOKEN_KEY
        if body.flags & need != need or body.flags & bad:
            v.append(
                PolicyViolation("sgx.attributes", "INIT, MODE64BIT; no PROVISION_KEY, EINITTOKEN_KEY",
                                ",".join(body.flag_names) or "none")
            )  # fmt: skip
    else:
        if not body.td_attributes & TdAttributes.SEPT_VE_DISABLE:
            names = ",".join(body.td_attribute_names) or "none"
            v.append(PolicyViolation("tdx.attributes", "SEPT_VE_DISABLE", names))
        if body.mr_service_td is not None and any(body.mr_service_td):
            v.append(PolicyViolation("tdx.mr_service_td", "zero", body.mr_service_td.hex()))

    if verified.tcb_status not in sp.tcb_statuses:
        v.append(PolicyViolation("tcb_status", sorted(sp.tcb_statuses), verified.tcb_status))
    rejected = sorted(set(verified.advisory_ids) & sp.reject_advisories)
    if rejected:
        v.append(PolicyViolation("advisories", f"none of {sorted(sp.reject_advisories)}", rejected))
    if not verified.simulated:
        if verified.collateral_expiry is None:
            v.append(PolicyViolation("collateral", "collateral with a nextUpdate", "none"))
        elif now >= verified.collateral_expiry:
            expected = f"unexpired (nextUpdate {verified.collateral_expiry})"
            v.append(PolicyViolation("collateral", expected, now))

    if verified.tee is TeeKind.SIM:
        assert isinstance(body, SgxReportBody)
        v += _best([i.mismatches(body, "sim") for i in sp.sim], "sim.identity")
    elif isinstance(body, SgxReportBody):
        v += _best([i.mismatches(body, "sgx") for i in sp.sgx], "sgx.identity")
    else:
        v += _best([i.mismatches(body) for i in sp.tdx], "tdx.identity")

    if report_data is not None and quote.report_data != report_data.ljust(64, b"\0"):
        v.append(PolicyViolation("report_data", report_data.ljust(64, b"\0").hex(), quote.report_data.hex()))
    return Verdict(secret_name, tuple(v), simulated=verified.simulated)


def encode_secret(data: bytes, fmt: str, *, where: str = "secret") -> bytes:
    """The bytes to send for a secret in delivery format ``fmt`` (see :data:`SECRET_FORMATS`).

    Raises:
        ValueError: the content does not suit the format (never includes the secret's bytes).
    """
    if fmt == "raw":
        if len(data) != 16:
            raise ValueError(f"{where}: format raw needs exactly 16 bytes (a wrap key), file has {len(data)}")
        return data
    if fmt == "hex":
        if len(data) != 16:
            raise ValueError(f"{where}: format hex needs a 16-byte key file, file has {len(data)} bytes")
        return data.hex().encode() + b"\0"
    if fmt == "string":
        if b"\0" in data or len(data) > _MAX_STRING_SECRET:
            raise ValueError(f"{where}: format string needs at most {_MAX_STRING_SECRET} bytes without NUL")
        return data + b"\0"
    raise ValueError(f"{where}: unknown format {fmt!r}")


def read_secret(policy: Policy, name: str) -> bytes:
    """Read secret ``name``'s file and encode it for delivery (call only after an accepted verdict).

    Raises:
        UnknownSecret, PolicyInvalid (unreadable or unsuitable file; the message never holds secret bytes).
    """
    sp = policy.secret(name)
    key = f"secrets.{name}.file"
    try:
        data = sp.file.read_bytes()
    except OSError as exc:
        raise PolicyInvalid(policy.source, key, f"cannot read {os.fspath(sp.file)}: {exc.strerror}") from exc
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise PolicyInvalid(policy.source, key, f"not a usable path {os.fspath(sp.file)!r}: {exc}") from exc
    try:
        return encode_secret(data, sp.format, where=os.fspath(sp.file))
    except ValueError as exc:
        raise PolicyInvalid(policy.source, key, str(exc)) from exc
