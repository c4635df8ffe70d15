"""The broker's decision function on real DCAP quotes (tests/vectors/dcap) at the manifest's time.

A real quote cannot sit in a live RA-TLS certificate (its report data binds someone else's key), so
TCB status, advisories, identities of real enclaves and collateral expiry are tested here, through
``decide_quote`` — the same function the live broker calls after checking the key binding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from teeserve.attest import (
    CachingCollateralSource, Collateral, CollateralUnavailable, FileCollateralSource, decode_quote_bytes, load_policy,
    parse_quote,
)  # fmt: skip
from teeserve.broker import LockedCollateralSource, decide_quote

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "dcap"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
#: A PCK chain that is not a PEM chain up to Intel's root is refused before collateral is looked up, with
#: teeserve's own reason (tests/attest/_attest_helpers.py OWN_REASON), not the manifest's later one.
OWN_REASON = {"intel-qvl-tdx-synthetic-test-root": "PCK certificate chain: no PEM certificates"}


def expected_error(e: dict[str, Any]) -> str:
    return OWN_REASON.get(e["id"], e["expected"].get("error_substring", ""))
ALL_STATUSES = '["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", ' \
               '"OutOfDate", "OutOfDateConfigurationNeeded"]'  # fmt: skip


def _entry(vid: str) -> dict[str, Any]:
    return next(e for e in MANIFEST if e["id"] == vid)


def _quote(e: dict[str, Any]) -> bytes:
    return decode_quote_bytes((VECTORS / e["quote_file"]).read_bytes())


def _policy(tmp: Path, body: str, *, tee: str = "sgx", statuses: str | None = None, extra: str = "") -> Any:
    (tmp / "k.key").write_bytes(b"\x11" * 16)
    lines = f'version = 1\n[secrets.k]\nfile = "k.key"\ntee = ["{tee}"]\n'
    if statuses:
        lines += f"tcb_statuses = {statuses}\n"
    lines += extra + f"[[secrets.k.{tee}]]\n{body}"
    (tmp / "p.toml").write_text(lines)
    return load_policy(tmp / "p.toml")


def _identity(quote: bytes) -> tuple[str, str]:
    body = parse_quote(quote).body
    if hasattr(body, "mr_enclave"):
        return "sgx", f'mr_enclave = "{body.mr_enclave.hex()}"\n'
    return "tdx", f'mr_td = "{body.mr_td.hex()}"\n'


@pytest.mark.parametrize("e", MANIFEST, ids=[e["id"] for e in MANIFEST])
def test_every_vector_gives_the_manifest_result_through_the_broker(tmp_path: Path, e: dict[str, Any]) -> None:
    quote = _quote(e)
    tee, ident = _identity(quote)
    policy = _policy(tmp_path, ident, tee=tee, statuses=ALL_STATUSES)
    d = decide_quote(quote, "k", policy=policy, collateral=FileCollateralSource(VECTORS / e["collateral_file"]),
                     now=e["now_secs"])  # fmt: skip
    exp = e["expected"]
    if exp["ok"]:
        assert d.category not in ("quote", "collateral", "certificate"), d.reason
        assert d.tcb_status == exp["status"] and set(d.advisories) == set(exp["advisory_ids"])
        assert d.verified is not None and not d.simulated
    else:
        assert not d.released and d.category in ("quote", "collateral")
        assert expected_error(e) in d.reason


SGX = "automata-sgx-v3-platform"  # SWHardeningNeeded, INTEL-SA-00615, ISV_PROD_ID 0, ISV_SVN 0


def _sgx(tmp: Path, body: str | None = None, **kw: Any) -> Any:
    e = _entry(SGX)
    quote = _quote(e)
    b = parse_quote(quote).body
    body = body if body is not None else f'mr_enclave = "{b.mr_enclave.hex()}"\n'
    policy = _policy(tmp, body, **kw)
    coll = FileCollateralSource(VECTORS / e["collateral_file"])
    return decide_quote(quote, "k", policy=policy, collateral=coll, now=kw.pop("now", e["now_secs"])), b


def test_tcb_status_not_allowed_by_default(tmp_path: Path) -> None:
    d, _ = _sgx(tmp_path)
    assert not d.released and d.category == "tcb" and d.rule == "tcb_status"
    assert "SWHardeningNeeded" in d.reason and d.advisories == ("INTEL-SA-00615",)


def test_tcb_status_allowed_then_released(tmp_path: Path) -> None:
    d, _ = _sgx(tmp_path, statuses='["UpToDate", "SWHardeningNeeded"]')
    assert d.released and d.rule == "secrets.k.sgx[0]" and d.tee == "sgx"


def test_advisory_rejected(tmp_path: Path) -> None:
    d, _ = _sgx(tmp_path, statuses='["SWHardeningNeeded"]', extra='reject_advisories = ["INTEL-SA-00615"]\n')
    assert not d.released and d.category == "tcb" and d.rule == "advisories" and "INTEL-SA-00615" in d.reason


@pytest.mark.parametrize(
    ("field", "rule"),
    [("mr_enclave", "sgx.mr_enclave"), ("mr_signer", "sgx.mr_signer"), ("isv_prod_id", "sgx.isv_prod_id"),
     ("min_isv_svn", "sgx.isv_svn")],
)  # fmt: skip
def test_wrong_identity_of_a_real_enclave(tmp_path: Path, field: str, rule: str) -> None:
    e = _entry(SGX)
    b = parse_quote(_quote(e)).body
    values = {"mr_signer": f'"{b.mr_signer.hex()}"', "isv_prod_id": str(b.isv_prod_id), "min_isv_svn": str(b.isv_svn)}
    if field == "mr_enclave":
        body = f'mr_enclave = "{"00" * 32}"\n'
    else:
        values[field] = {"mr_signer": f'"{"00" * 32}"', "isv_prod_id": str(b.isv_prod_id + 1),
                         "min_isv_svn": str(b.isv_svn + 1)}[field]  # fmt: skip
        body = "".join(f"{k} = {v}\n" for k, v in values.items())
    d, _ = _sgx(tmp_path, body, statuses='["SWHardeningNeeded"]')
    assert not d.released and d.category == "policy" and rule in d.rule and rule in d.reason


def test_isv_svn_at_minimum_is_accepted(tmp_path: Path) -> None:
    e = _entry(SGX)
    b = parse_quote(_quote(e)).body
    body = f'mr_signer = "{b.mr_signer.hex()}"\nisv_prod_id = {b.isv_prod_id}\nmin_isv_svn = {b.isv_svn}\n'
    d, _ = _sgx(tmp_path, body, statuses='["SWHardeningNeeded"]')
    assert d.released


def test_expired_collateral(tmp_path: Path) -> None:
    e = _entry("sgx-collateral-expired")
    quote = _quote(e)
    policy = _policy(tmp_path, _identity(quote)[1], statuses=ALL_STATUSES)
    d = decide_quote(quote, "k", policy=policy, collateral=FileCollateralSource(VECTORS / e["collateral_file"]),
                     now=e["now_secs"])  # fmt: skip
    assert not d.released and d.category == "collateral" and "expired" in d.reason
    assert d.measurements["verified"] is False  # recorded for the audit, marked unverified


def test_tampered_real_quote(tmp_path: Path) -> None:
    e = _entry(SGX)
    quote = bytearray(_quote(e))
    quote[112] ^= 0xFF  # MRENCLAVE
    policy = _policy(tmp_path, f'mr_enclave = "{bytes(quote[112:144]).hex()}"\n', statuses=ALL_STATUSES)
    d = decide_quote(bytes(quote), "k", policy=policy, collateral=FileCollateralSource(VECTORS / e["collateral_file"]),
                     now=e["now_secs"])  # fmt: skip
    assert not d.released and d.category == "quote"


class _Pccs:
    """A collateral fetcher standing in for the PCCS: up or down."""

    def __init__(self, collateral: Collateral) -> None:
        self.collateral = collateral
        self.up = True
        self.calls = 0

    def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral:
        self.calls += 1
        if not self.up:
            raise CollateralUnavailable("PCCS down")
        return self.collateral


def test_cached_collateral_while_pccs_down_then_fail_closed(tmp_path: Path) -> None:
    e = _entry(SGX)
    quote = _quote(e)
    coll = Collateral.from_file(VECTORS / e["collateral_file"])
    pccs = _Pccs(coll)
    source = LockedCollateralSource(CachingCollateralSource(pccs, tmp_path / "cache", refresh_interval=60, retry_after=1))
    policy = _policy(tmp_path, _identity(quote)[1], statuses='["SWHardeningNeeded"]')
    now = e["now_secs"]
    assert decide_quote(quote, "k", policy=policy, collateral=source, now=now).released
    assert list((tmp_path / "cache").glob("*.json"))  # cached on disk
    pccs.up = False
    later = now + 3600  # refresh due, PCCS down: served from the cache, still valid
    assert decide_quote(quote, "k", policy=policy, collateral=source, now=later).released
    assert pccs.calls == 2
    d = decide_quote(quote, "k", policy=policy, collateral=source, now=coll.next_update + 10)
    assert not d.released and d.category == "collateral"  # expired and no fresh set: fail closed


def test_a_real_td_released_or_denied_by_its_xfam_and_the_audit_record_shows_it(tmp_path: Path) -> None:
    e = _entry("phala-tdx-v4")
    quote = _quote(e)
    b = parse_quote(quote).body
    coll = FileCollateralSource(VECTORS / e["collateral_file"])
    ident = f'mr_td = "{b.mr_td.hex()}"\ntd_attributes = "0x{b.td_attributes:016x}"\n'
    ok = decide_quote(quote, "k", policy=_policy(tmp_path, ident + f'xfam = "0x{b.xfam:016x}"\n', tee="tdx",
                                                 statuses=ALL_STATUSES), collateral=coll, now=e["now_secs"])
    assert ok.released, ok.reason
    denied = decide_quote(quote, "k", policy=_policy(tmp_path, ident + 'xfam = "0x0000000000000003"\n', tee="tdx",
                                                     statuses=ALL_STATUSES), collateral=coll, now=e["now_secs"])
    assert not denied.released and denied.rule == "tdx.xfam"
    record = denied.audit_record("127.0.0.1:1")
    assert record.measurements["xfam"] == f"0x{b.xfam:016x}" == "0x00000000000602e7"
    assert "0x0000000000000003" in denied.reason


def test_the_broker_does_not_serialize_collateral_lookups_behind_one_lock(tmp_path: Path) -> None:
    """The caching source locks per platform; one lock for all let a quote with a made-up FMSPC (not
    yet verified) hold up every other attestation while its fetch ran."""
    from teeserve.attest import CachingCollateralSource
    from teeserve.broker import KeyBroker

    class Fetcher:
        def fetch(self, tee: str, fmspc: str, ca: str) -> Any:
            raise AssertionError("not called")

    source = CachingCollateralSource(Fetcher(), None)
    broker = KeyBroker(object(), collateral=source, audit=None)  # type: ignore[arg-type]  # (only stored)
    assert broker.collateral is source

