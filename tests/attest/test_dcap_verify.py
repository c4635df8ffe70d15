"""DCAP verification through teeserve: every manifest triple, tampering, wrong collateral, wrong root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from teeserve.attest import (
    Collateral,
    CollateralInvalid,
    CollateralUnavailable,
    DictCollateralSource,
    FileCollateralSource,
    MalformedQuote,
    QuoteVerificationFailed,
    TeeKind,
    parse_quote,
    verify_dcap,
    verify_evidence,
)

from _attest_helpers import VECTORS, collateral_path, entry, expected_error, iso, manifest, quote_of

MANIFEST = manifest()


def test_manifest_has_the_17_triples() -> None:
    assert len(MANIFEST) == 17
    assert sum(e["expected"]["ok"] for e in MANIFEST) == 9


@pytest.mark.parametrize("e", MANIFEST, ids=lambda e: e["id"])
def test_manifest_vector(e: dict) -> None:
    raw = quote_of(e)
    source = FileCollateralSource(collateral_path(e))
    exp = e["expected"]
    if exp["ok"]:
        v = verify_evidence(raw, collateral=source, now=e["now_secs"])
        assert v.tcb_status == exp["status"]
        assert set(v.advisory_ids) == set(exp["advisory_ids"])
        assert v.tee is (TeeKind.TDX if e["quote_info"]["tee"] == "TDX" else TeeKind.SGX)
        assert not v.simulated and v.sim_key_id is None
        assert v.verified_at == e["now_secs"]
        dates = e["collateral_dates"]
        assert v.collateral_expiry == min(iso(d[1]) for d in dates.values())
        assert v.collateral_expiry > e["now_secs"]
        assert v.quote.raw == raw
    else:
        with pytest.raises(QuoteVerificationFailed) as info:
            verify_evidence(raw, collateral=source, now=e["now_secs"])
        assert expected_error(e) in info.value.reason
        assert expected_error(e) in str(info.value)


def _valid(vector_id: str = "automata-sgx-v3-platform") -> tuple[bytes, Collateral, int]:
    e = entry(vector_id)
    return quote_of(e), Collateral.from_file(collateral_path(e)), e["now_secs"]


@pytest.mark.parametrize(
    ("offset", "what"),
    [(96, "DEBUG bit"), (112, "mr_enclave"), (176, "mr_signer"), (304, "isv_prod_id"), (368, "report_data"),
     (0 + 8, "qe_svn"), (431, "last byte of report data")],
)  # fmt: skip
def test_flipped_signed_byte_is_rejected(offset: int, what: str) -> None:
    raw, coll, now = _valid()
    bad = bytearray(raw)
    bad[offset] ^= 0x02
    with pytest.raises(QuoteVerificationFailed, match="signature is invalid"):
        verify_dcap(bytes(bad), coll, now=now)


def test_flipped_tdx_report_data_is_rejected() -> None:
    raw, coll, now = _valid("phala-tdx-v4")
    bad = bytearray(raw)
    bad[600] ^= 1
    with pytest.raises(QuoteVerificationFailed):
        verify_dcap(bytes(bad), coll, now=now)


def test_flipped_quote_signature_and_zeroed_attestation_key() -> None:
    raw, coll, now = _valid()
    for lo, hi in ((436, 500), (500, 564)):
        bad = bytearray(raw)
        if hi == 564:
            bad[lo:hi] = bytes(64)
        else:
            bad[lo + 5] ^= 0xFF
        with pytest.raises(QuoteVerificationFailed):
            verify_dcap(bytes(bad), coll, now=now)


def test_flipped_qe_report_is_rejected() -> None:
    raw, coll, now = _valid()
    bad = bytearray(raw)
    bad[564 + 64] ^= 0x01  # QE report mr_enclave, signed by the PCK key
    with pytest.raises(QuoteVerificationFailed):
        verify_dcap(bytes(bad), coll, now=now)


def test_truncated_quote_is_rejected_before_dcap() -> None:
    raw, coll, now = _valid()
    with pytest.raises(MalformedQuote):
        verify_evidence(raw[:1000], collateral=DictCollateralSource([coll]), now=now)


def test_sgx_quote_with_tdx_collateral() -> None:
    raw, _, now = _valid()
    tdx_coll = Collateral.from_file(VECTORS / "automata-dcap-attestation/collateral_tdx_00806f050000_0625.json")
    tdx_now = entry("automata-tdx-v4-2025-06")["now_secs"]  # inside the TDX collateral's window
    with pytest.raises(QuoteVerificationFailed, match="Unsupported QE Identity"):
        verify_dcap(raw, tdx_coll, now=tdx_now)
    # a source keyed by (tee, fmspc, ca) never hands it out in the first place
    with pytest.raises(CollateralUnavailable, match="no collateral for sgx FMSPC 00606A000000"):
        verify_evidence(raw, collateral=DictCollateralSource([tdx_coll]), now=now)


def test_wrong_root_is_rejected() -> None:
    raw, coll, now = _valid()
    platform_ca = (VECTORS / "automata-dcap-attestation/PCCSSetupBase_platformDer.der").read_bytes()
    with pytest.raises(QuoteVerificationFailed, match="Failed to parse root CA CRL"):
        verify_dcap(raw, coll, now=now, root_ca_der=platform_ca)
    real_root = (VECTORS / "automata-dcap-attestation/PCCSSetupBase_rootCaDer.der").read_bytes()
    assert verify_dcap(raw, coll, now=now, root_ca_der=real_root).tcb_status == "SWHardeningNeeded"


@pytest.mark.parametrize(("field", "message"), [("tcb_info", "tcb_info"), ("qe_identity", "qe_identity")])
def test_edited_signed_collateral_is_rejected(field: str, message: str) -> None:
    raw, coll, now = _valid()
    doc = json.loads(coll.json_text)
    doc[field] = doc[field].replace('"version":', '"version" :', 1)  # same meaning, different bytes
    assert doc[field] != json.loads(coll.json_text)[field]
    edited = Collateral.from_json(json.dumps(doc))
    with pytest.raises(QuoteVerificationFailed, match=f"Signature is invalid for {message}"):
        verify_dcap(raw, edited, now=now)


def test_wall_clock_rejects_the_old_collateral() -> None:
    raw, coll, _ = _valid()
    with pytest.raises(QuoteVerificationFailed):
        verify_dcap(raw, coll)  # now = the clock: every vector's collateral has expired


def test_collateral_window_is_computed_from_all_pieces() -> None:
    e = entry("automata-sgx-v3-platform")
    coll = Collateral.from_file(collateral_path(e))
    d = e["collateral_dates"]
    assert coll.next_update == min(iso(x[1]) for x in d.values())
    assert coll.issue_date == max(iso(x[0]) for x in d.values())
    assert (coll.tee, coll.fmspc, coll.ca) == ("sgx", "00606A000000", "platform")
    assert coll.valid_at(e["now_secs"]) and not coll.valid_at(coll.next_update)


def test_directory_source_picks_the_generation_valid_now(tmp_path: Path) -> None:
    gens = {
        "automata-tdx-v4-2025-02": "automata-dcap-rs/collateral_tdx_00806f050000.json",
        "automata-tdx-v4-2025-06": "automata-dcap-attestation/collateral_tdx_00806f050000_0625.json",
        "automata-tdx-v4-2025-10": "automata-dcap-attestation/collateral_tdx_00806F050000_1025.json",
    }
    for i, rel in enumerate(gens.values()):
        shutil.copy(VECTORS / rel, tmp_path / f"set{i}.json")
    shutil.copy(VECTORS / "automata-dcap-attestation/collateral_sgx_00606a000000_0825.json", tmp_path / "sgx.json")
    src = FileCollateralSource(tmp_path)
    for vector_id, rel in gens.items():
        e = entry(vector_id)
        q = parse_quote(quote_of(e))
        chosen = src.get(q, now=e["now_secs"])
        assert chosen.json_text == (VECTORS / rel).read_text()
        assert verify_evidence(q.raw, collateral=src, now=e["now_secs"]).tcb_status == "OutOfDate"
    sgx = entry("automata-sgx-v3-platform")
    assert verify_evidence(quote_of(sgx), collateral=src, now=sgx["now_secs"]).tcb_status == "SWHardeningNeeded"
    with pytest.raises(CollateralUnavailable, match="B0C06F000000"):
        verify_evidence(quote_of(entry("phala-tdx-v4")), collateral=src, now=0)


def test_directory_source_names_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CollateralInvalid, match="broken.json"):
        FileCollateralSource(tmp_path)
    (tmp_path / "broken.json").unlink()
    with pytest.raises(CollateralUnavailable, match="no \\*.json"):
        FileCollateralSource(tmp_path)


def test_single_file_source_refuses_another_fmspc() -> None:
    src = FileCollateralSource(collateral_path(entry("phala-tdx-v4")))
    with pytest.raises(CollateralUnavailable, match="FMSPC"):
        verify_evidence(quote_of(entry("automata-sgx-v3-platform")), collateral=src, now=0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("pck_crl"), "missing"),
        (lambda d: d.update(tcb_info="[1]"), "JSON objects"),
        (lambda d: d.update(root_ca_crl="zz"), "root_ca_crl"),
        (lambda d: d.update(tcb_info=d["tcb_info"].replace('"nextUpdate"', '"nextUpdat"')), "nextUpdate"),
    ],
)
def test_malformed_collateral_json(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(collateral_path(entry("automata-sgx-v3-platform")).read_text())
    mutate(doc)
    with pytest.raises(CollateralInvalid, match=message):
        Collateral.from_json(json.dumps(doc), source="x.json")
    with pytest.raises(CollateralInvalid, match="not JSON"):
        Collateral.from_json("{", source="x.json")


def test_no_collateral_source_for_a_dcap_quote() -> None:
    raw, _, now = _valid()
    with pytest.raises(CollateralUnavailable, match="no collateral source"):
        verify_evidence(raw, collateral=None, now=now)


def test_verified_quote_string_names_status_and_measurement() -> None:
    raw, coll, now = _valid()
    v = verify_dcap(raw, coll, now=now)
    text = str(v)
    assert "SWHardeningNeeded" in text and "INTEL-SA-00615" in text and v.quote.body.mr_enclave.hex() in text
    assert "SIMULATED" not in text and "SIMULATED" not in repr(v)


def test_a_pck_chain_not_ending_at_intels_root_is_refused_before_any_collateral_lookup() -> None:
    """The FMSPC that picks the collateral comes from the PCK certificate: a chain that is not Intel's
    (here the synthetic vector's test root) is refused first, so a made-up FMSPC costs no PCCS fetch."""
    e = entry("intel-qvl-tdx-synthetic-test-root")

    class Recording:
        calls = 0

        def get(self, quote: object, *, now: int) -> Collateral:
            Recording.calls += 1
            raise AssertionError("no collateral lookup for a chain that is not Intel's")

    with pytest.raises(QuoteVerificationFailed, match="PCK certificate chain: no PEM certificates"):
        verify_evidence(quote_of(e), collateral=Recording(), now=e["now_secs"])
    assert Recording.calls == 0


def test_check_pck_chain_links() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from teeserve.attest._pck_chain import check_pck_chain

    chain = parse_quote(quote_of(entry("automata-sgx-v3-platform"))).signature_data.pck_chain_pem()
    assert chain
    check_pck_chain(chain)  # Intel's: passes
    certs = x509.load_pem_x509_certificates(chain)
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    with pytest.raises(QuoteVerificationFailed, match="is not signed by"):
        check_pck_chain(pem[0] + pem[0] + pem[2])  # the leaf where its CA should be
    with pytest.raises(QuoteVerificationFailed, match="expected the PCK leaf, its CA and the root"):
        check_pck_chain(pem[2])
    # The synthetic vector's chain (DER in the quote, test 'Intel SGX Root CA' key), as PEM: signed link
    # by link, but up to another key than Intel's.
    der = parse_quote(quote_of(entry("intel-qvl-tdx-synthetic-test-root"))).signature_data.pck_chain_pem()
    assert der
    test_chain, rest = [], bytes(der)
    while rest[:1] == b"\x30":
        size = 4 + int.from_bytes(rest[2:4], "big")  # 30 82 LL LL
        test_chain.append(x509.load_der_x509_certificate(rest[:size]).public_bytes(serialization.Encoding.PEM))
        rest = rest[size:]
    assert len(test_chain) == 3
    with pytest.raises(QuoteVerificationFailed, match="does not end at the Intel SGX Root CA"):
        check_pck_chain(b"".join(test_chain))
    with pytest.raises(QuoteVerificationFailed, match="not readable PEM"):
        check_pck_chain(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")

