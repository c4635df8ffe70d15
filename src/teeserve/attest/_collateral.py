"""Collateral: the Intel-signed TCB info, QE identity, CRLs and chains a DCAP verifier needs.

Strategy: a :class:`Collateral` wraps one set in dcap-qvl's ``QuoteCollateralV3`` JSON layout
(dcap-attestation.md §2.7) together with what a cache needs to know about it: TEE, FMSPC, PCK CA type
and its validity window (the latest issue date and the **earliest** ``nextUpdate`` of the tcbInfo,
the QE identity and both CRLs). The signed ``tcb_info`` / ``qe_identity`` strings are passed through
byte for byte and never re-serialised.

Where collateral comes from is behind the :class:`CollateralSource` protocol (``get(quote, now=)``),
so the verifier does not care whether it is a file (offline mode), an in-memory dict (tests,
benchmarks) or a PCCS behind an on-disk cache (``_pccs``). Sources pick the set for the quote's
(TEE, FMSPC, CA) key; judging freshness is left to dcap-qvl (which names the exact reason) except
in the cache, which fails closed itself once nothing unexpired is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._errors import CollateralInvalid, CollateralUnavailable
from ._quote import Quote

__all__ = ["Collateral", "CollateralSource", "FileCollateralSource", "DictCollateralSource"]

_REQUIRED = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


def _iso_to_unix(value: Any, what: str, source: str) -> int:
    if not isinstance(value, str):
        raise CollateralInvalid(f"{source}: {what} is missing or not a date")
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError as exc:
        raise CollateralInvalid(f"{source}: {what} is not an ISO date: {value!r}") from exc


def _crl_window(hex_der: Any, what: str, source: str) -> tuple[int, int]:
    from cryptography import x509

    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(hex_der))
    except (ValueError, TypeError) as exc:
        raise CollateralInvalid(f"{source}: {what} is not hex of a DER CRL") from exc
    if crl.next_update_utc is None:
        raise CollateralInvalid(f"{source}: {what} has no nextUpdate")
    return int(crl.last_update_utc.timestamp()), int(crl.next_update_utc.timestamp())


def _ca_type(chain_pem: str, source: str) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        first = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    except (ValueError, IndexError) as exc:
        raise CollateralInvalid(f"{source}: pck_crl_issuer_chain is not a PEM certificate chain") from exc
    cns = first.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    return "processor" if "Processor" in cn else "platform" if "Platform" in cn else None


@dataclass(frozen=True)
class Collateral:
    """One collateral set, validated enough to be keyed and timed (the signatures are dcap-qvl's job)."""

    json_text: str = field(repr=False)
    tee: str | None  # "sgx" / "tdx" from tcbInfo.id (None for TCB Info v2, which has no id)
    fmspc: str
    ca: str | None  # "platform" / "processor" from the PCK CRL issuer
    issue_date: int  # the latest issueDate / thisUpdate of the pieces
    next_update: int  # the earliest nextUpdate: the collateral expires then
    source: str = "<memory>"
    dcap: Any = field(default=None, repr=False, compare=False)  # the dcap_qvl.QuoteCollateralV3

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<memory>") -> Collateral:
        """Read a ``QuoteCollateralV3`` JSON document.

        Raises:
            CollateralInvalid: not JSON, a field missing, dates or CRLs unreadable, or dcap-qvl refuses it.
        """
        import dcap_qvl

        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CollateralInvalid(f"{source}: not UTF-8 JSON") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CollateralInvalid(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(doc, dict):
            raise CollateralInvalid(f"{source}: not a QuoteCollateralV3 JSON object")
        missing = [k for k in _REQUIRED if not isinstance(doc.get(k), str)]
        if missing:
            raise CollateralInvalid(f"{source}: missing or non-string field(s): {', '.join(missing)}")
        try:
            tcb = json.loads(doc["tcb_info"])
            qe = json.loads(doc["qe_identity"])
        except json.JSONDecodeError as exc:
            raise CollateralInvalid(f"{source}: tcb_info or qe_identity is not JSON text") from exc
        if not isinstance(tcb, dict) or not isinstance(qe, dict):
            raise CollateralInvalid(f"{source}: tcb_info / qe_identity must be JSON objects")
        fmspc = tcb.get("fmspc")
        if not isinstance(fmspc, str) or len(fmspc) != 12:
            raise CollateralInvalid(f"{source}: tcb_info.fmspc is missing or not 12 hex digits")
        tcb_id = tcb.get("id")
        tee = {"SGX": "sgx", "TDX": "tdx"}.get(tcb_id) if isinstance(tcb_id, str) else None
        issues = [
            _iso_to_unix(tcb.get("issueDate"), "tcb_info.issueDate", source),
            _iso_to_unix(qe.get("issueDate"), "qe_identity.issueDate", source),
        ]
        nexts = [
            _iso_to_unix(tcb.get("nextUpdate"), "tcb_info.nextUpdate", source),
            _iso_to_unix(qe.get("nextUpdate"), "qe_identity.nextUpdate", source),
        ]
        for name in ("pck_crl", "root_ca_crl"):
            this, nxt = _crl_window(doc[name], name, source)
            issues.append(this)
            nexts.append(nxt)
        ca = _ca_type(doc["pck_crl_issuer_chain"], source)
        try:
            dcap = dcap_qvl.QuoteCollateralV3.from_json(text)
        except ValueError as exc:
            raise CollateralInvalid(f"{source}: dcap-qvl cannot read it: {exc}") from exc
        return cls(text, tee, fmspc.upper(), ca, max(issues), min(nexts), source, dcap)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Collateral:
        """Read a collateral JSON file (see :meth:`from_json`)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CollateralUnavailable(f"{os.fspath(path)}: cannot read collateral: {exc.strerror}") from exc
        return cls.from_json(data, source=os.fspath(path))

    def valid_at(self, now: int) -> bool:
        """True when ``now`` lies in [latest issue date, earliest nextUpdate)."""
        return self.issue_date <= now < self.next_update

    def key(self) -> tuple[str | None, str, str | None]:
        return (self.tee, self.fmspc, self.ca)


@runtime_checkable
class CollateralSource(Protocol):
    """Anything that can hand out the collateral for a quote at time ``now`` (Unix seconds).

    Raises:
        CollateralUnavailable: nothing for this quote's (TEE, FMSPC, CA).
        CollateralExpired: only expired collateral is left (caching sources).
        CollateralInvalid: what was found is malformed.
    """

    def get(self, quote: Quote, *, now: int) -> Collateral: ...


def _matches(c: Collateral, quote: Quote) -> bool:
    if c.fmspc != quote.fmspc:
        return False
    if c.tee is not None and c.tee != quote.tee:
        return False
    return c.ca is None or quote.pck_ca is None or c.ca == quote.pck_ca


def _select(candidates: Iterable[Collateral], quote: Quote, now: int, where: str) -> Collateral:
    """The set for the quote valid at ``now`` (latest issued), else the latest one (dcap-qvl says why not)."""
    if quote.fmspc is None:
        raise CollateralUnavailable(f"{where}: cannot tell the quote's FMSPC (no readable PCK certificate)")
    found = [c for c in candidates if _matches(c, quote)]
    if not found:
        raise CollateralUnavailable(
            f"{where}: no collateral for {quote.tee} FMSPC {quote.fmspc} ({quote.pck_ca or '?'} CA)"
        )
    valid = [c for c in found if c.valid_at(now)]
    return max(valid or found, key=lambda c: c.issue_date)


class DictCollateralSource:
    """In-memory collateral (tests, benchmarks, a broker that preloads): picked by (TEE, FMSPC, CA)."""

    def __init__(self, collaterals: Iterable[Collateral] = ()) -> None:
        self._items: list[Collateral] = list(collaterals)

    def add(self, collateral: Collateral) -> None:
        self._items.append(collateral)

    def get(self, quote: Quote, *, now: int) -> Collateral:
        return _select(self._items, quote, now, "in-memory collateral")


class FileCollateralSource:
    """Offline mode: one collateral JSON file, or a directory of them (``*.json``).

    A single file is used for any quote whose FMSPC and TEE it matches. In a directory each file is
    indexed by the (TEE, FMSPC, CA) it states inside, so the names are free; several generations of
    the same FMSPC may sit side by side, and the one valid at ``now`` is chosen. Every ``*.json`` in
    the directory must be collateral: a bad file is an error naming it, not silently skipped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._is_dir = self.path.is_dir()
        if self._is_dir:
            files = sorted(self.path.glob("*.json"))
            if not files:
                raise CollateralUnavailable(f"{self.path}: no *.json collateral files in this directory")
            self._items = [Collateral.from_file(f) for f in files]
        else:
            self._items = [Collateral.from_file(self.path)]

    def get(self, quote: Quote, *, now: int) -> Collateral:
        if not self._is_dir:
            c = self._items[0]
            if quote.fmspc is not None and not _matches(c, quote):
                raise CollateralUnavailable(
                    f"{self.path}: collateral is for {c.tee or '?'} FMSPC {c.fmspc}, "
                    f"the quote is {quote.tee} FMSPC {quote.fmspc}"
                )
            return c
        return _select(self._items, quote, now, str(self.path))
