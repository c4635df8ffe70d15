"""Quote parsing: real SGX v3 / TDX v4 / v5 quotes against dcap-qvl's own parse, malformed input, fuzz."""

from __future__ import annotations

import json
import struct

import dcap_qvl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeserve.attest import (
    MalformedQuote,
    QuoteError,
    SgxReportBody,
    TdReport,
    UnsupportedQuoteVersion,
    decode_quote_bytes,
    describe_quote,
    parse_quote,
)

from _attest_helpers import VECTORS, collateral_path, entry, manifest, quote_of

ALL_QUOTE_FILES = sorted(
    {e["quote_file"] for e in manifest()}
    | {
        "phala-dcap-qvl/tdx-quote.hex",
        "phala-dcap-qvl/quote-from-tappd.hex",
        "google-go-tdx-guest/cos-113-tdx-quote.dat",
        "automata-dcap-attestation/quotes_alibaba_quote_5.hex",
        "automata-dcap-rs/quote_sgx_v3_from_lib_rs.hex",
        "intel-qvl-sampledata/quote.dat",
    }
)


def _raw(name: str) -> bytes:
    return decode_quote_bytes((VECTORS / name).read_bytes())


@pytest.mark.parametrize("name", ALL_QUOTE_FILES)
def test_header_and_body_match_dcap_qvl(name: str) -> None:
    raw = _raw(name)
    q = parse_quote(raw)
    ref = dcap_qvl.parse_quote(raw)
    assert q.header.version == ref.header.version
    assert q.header.tee_type == ref.header.tee_type
    assert q.header.att_key_type == ref.header.attestation_key_type == 2
    assert q.header.qe_vendor_id == bytes(ref.header.qe_vendor_id)
    assert q.header.user_data == bytes(ref.header.user_data)
    r = ref.report
    if isinstance(q.body, SgxReportBody):
        assert q.tee == "sgx" and ref.is_sgx()
        assert q.body.mr_enclave == bytes(r.mr_enclave)
        assert q.body.mr_signer == bytes(r.mr_signer)
        assert q.body.report_data == bytes(r.report_data)
        assert q.body.cpu_svn == bytes(r.cpu_svn)
        assert q.body.attributes == bytes(r.attributes)
    else:
        assert q.tee == "tdx" and ref.is_tdx()
        for f in ("tee_tcb_svn", "mr_seam", "mr_signer_seam", "seam_attributes", "mr_td", "mr_config_id",
                  "mr_owner", "mr_owner_config", "report_data"):  # fmt: skip
            assert getattr(q.body, f) == bytes(getattr(r, f)), f
        assert q.body.td_attributes == int.from_bytes(bytes(r.td_attributes), "little")
        assert q.body.xfam == int.from_bytes(bytes(r.xfam), "little")
        assert q.body.rtmrs == tuple(bytes(getattr(r, f"rt_mr{i}")) for i in range(4))
        if q.body.kind == "TD15":
            assert q.body.mr_service_td == bytes(r.mr_service_td)
            assert q.body.tee_tcb_svn2 == bytes(r.tee_tcb_svn2)


@pytest.mark.parametrize("e", [e for e in manifest() if e["quote_info"].get("fmspc")], ids=lambda e: e["id"])
def test_fmspc_and_ca_from_the_pck_certificate(e: dict) -> None:
    q = parse_quote(quote_of(e))
    assert q.fmspc == e["quote_info"]["fmspc"].upper()
    assert q.pck_ca == e["quote_info"]["pck_ca"]
    assert q.version == e["quote_info"]["version"]
    assert q.tee == e["quote_info"]["tee"].lower()
    pem = q.signature_data.pck_chain_pem()
    assert pem is not None and pem.count(b"BEGIN CERTIFICATE") == 3


@pytest.mark.parametrize(
    "vector_id", ["automata-sgx-v3-platform", "dcaprs-sgx-v3-platform", "phala-sgx-v3-processor"]
)
def test_sgx_isv_fields_match_dcap_qvls_verified_report(vector_id: str) -> None:
    """isv_prod_id / isv_svn / misc_select are not exposed by dcap-qvl's parser; its report JSON has them."""
    e = entry(vector_id)
    raw = quote_of(e)
    coll = dcap_qvl.QuoteCollateralV3.from_json(collateral_path(e).read_text())
    ref = json.loads(dcap_qvl.verify(raw, coll, e["now_secs"]).to_json())["report"]["SgxEnclave"]
    body = parse_quote(raw).body
    assert isinstance(body, SgxReportBody)
    assert (body.isv_prod_id, body.isv_svn, body.misc_select) == (ref["isv_prod_id"], ref["isv_svn"], ref["misc_select"])
    assert body.attributes.hex() == ref["attributes"]
    assert body.flag_names == ("INIT", "MODE64BIT") and not body.debug


def test_td15_body_and_v5_fields() -> None:
    q = parse_quote(quote_of(entry("automata-tdx-v5-servicetd")))
    assert q.version == 5 and q.body_type == 3
    assert isinstance(q.body, TdReport) and q.body.kind == "TD15"
    assert q.body.mr_service_td is not None and any(q.body.mr_service_td)
    assert q.signed_length == 702
    assert "SEPT_VE_DISABLE" in q.body.td_attribute_names


def test_tdx_v4_layout_offsets() -> None:
    raw = quote_of(entry("phala-tdx-v4"))
    q = parse_quote(raw)
    assert isinstance(q.body, TdReport) and q.body.kind == "TD10"
    assert q.body.mr_td == raw[184:232]
    assert q.body.rtmr3 == raw[520:568]
    assert q.body.report_data == raw[568:632]
    assert q.signed_length == 632
    # QE report certification data (type 6) with the PCK chain nested (type 5)
    cert = q.signature_data.certification
    assert cert.type == 6 and cert.inner is not None and cert.inner.type == 5
    assert q.signature_data.qe_report is not None
    assert q.trailing_bytes == len(raw) - 4936


def test_sgx_v3_layout_offsets() -> None:
    raw = quote_of(entry("phala-sgx-v3-processor"))
    q = parse_quote(raw)
    body = q.body
    assert isinstance(body, SgxReportBody)
    assert body.mr_enclave == raw[112:144] and body.mr_signer == raw[176:208]
    assert body.report_data == raw[368:432]
    assert body.report_data.startswith(b"Hello, world!")
    assert struct.unpack_from("<HH", raw, 304) == (body.isv_prod_id, body.isv_svn)
    assert q.signed_length == 432 and q.trailing_bytes == 0
    assert q.signature_data.certification.type == 5


def test_hex_input_equals_binary() -> None:
    binary = (VECTORS / "automata-dcap-rs/quote_sgx_v3_00606a000000.dat").read_bytes()
    text = (VECTORS / "automata-dcap-rs/quote_sgx_v3_from_lib_rs.hex").read_bytes()
    assert decode_quote_bytes(text) == binary
    assert decode_quote_bytes(b"0x" + binary.hex().encode() + b"\n") == binary
    assert decode_quote_bytes(binary) == binary
    with pytest.raises(MalformedQuote):
        decode_quote_bytes(b"abc")


def test_synthetic_intel_quote_parses_without_fmspc() -> None:
    q = parse_quote(_raw("intel-qvl-sampledata/quote.dat"))  # cert data type 1, no PCK chain
    assert q.fmspc is None and q.pck_ca is None
    assert q.signature_data.certification.type == 1
    assert describe_quote(q)["certification_data"] == "PPID in clear"


def test_every_truncation_is_malformed_quote() -> None:
    raw = quote_of(entry("phala-sgx-v3-processor"))  # no trailing bytes: every byte is needed
    for n in range(0, len(raw), 7):
        with pytest.raises(MalformedQuote) as info:
            parse_quote(raw[:n])
        assert 0 <= info.value.offset <= n
        assert info.value.field


def test_truncated_tdx_names_the_field() -> None:
    raw = quote_of(entry("phala-tdx-v4"))
    with pytest.raises(MalformedQuote) as info:
        parse_quote(raw[:200])
    assert info.value.field == "td.mr_td" and info.value.offset == 184
    assert "td.mr_td" in str(info.value) and "184" in str(info.value)


def test_signature_length_beyond_the_end() -> None:
    raw = bytearray(quote_of(entry("phala-sgx-v3-processor")))
    struct.pack_into("<I", raw, 432, 10**6)
    with pytest.raises(MalformedQuote) as info:
        parse_quote(bytes(raw))
    assert info.value.field == "signature_data_len" and info.value.offset == 432


def test_cert_data_size_inconsistent() -> None:
    raw = bytearray(quote_of(entry("phala-sgx-v3-processor")))
    off = 436 + 128 + 384 + 64
    n = struct.unpack_from("<H", raw, off)[0]
    size_off = off + 2 + n + 2
    struct.pack_into("<I", raw, size_off, struct.unpack_from("<I", raw, size_off)[0] - 10)
    with pytest.raises(MalformedQuote) as info:
        parse_quote(bytes(raw))
    assert info.value.field == "signature_data_len"


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "exc"),
    [
        (0, "<H", 2, UnsupportedQuoteVersion),  # EPID quote v2
        (0, "<H", 6, UnsupportedQuoteVersion),
        (2, "<H", 3, UnsupportedQuoteVersion),  # ECDSA P-384
        (4, "<I", 1, MalformedQuote),  # reserved field of a v3 quote
    ],
)
def test_unsupported_sgx_headers(offset: int, fmt: str, value: int, exc: type) -> None:
    raw = bytearray(quote_of(entry("phala-sgx-v3-processor")))
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(exc):
        parse_quote(bytes(raw))


def test_unsupported_tdx_variants() -> None:
    v4 = bytearray(quote_of(entry("phala-tdx-v4")))
    struct.pack_into("<I", v4, 4, 0)  # a v4 quote with SGX tee type
    with pytest.raises(UnsupportedQuoteVersion, match="TEE type"):
        parse_quote(bytes(v4))
    v5 = bytearray(quote_of(entry("google-tdx-v5-td15")))
    for body_type in (1, 4):
        b = bytearray(v5)
        struct.pack_into("<H", b, 48, body_type)
        with pytest.raises(UnsupportedQuoteVersion, match="body type"):
            parse_quote(bytes(b))
    struct.pack_into("<I", v5, 50, 584)  # TD15 body type with a TD10 size
    with pytest.raises(MalformedQuote, match="body.size"):
        parse_quote(bytes(v5))


def test_type_errors() -> None:
    with pytest.raises(TypeError):
        parse_quote("not bytes")  # type: ignore[arg-type]


_SEEDS = [quote_of(entry(i)) for i in ("phala-sgx-v3-processor", "phala-tdx-v4", "google-tdx-v5-td15")]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_garbage_in_only_our_errors_out(data: bytes) -> None:
    try:
        parse_quote(data)
    except QuoteError:
        pass


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(_SEEDS))),
    st.lists(st.tuples(st.integers(0, 5005), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 6000),
)
def test_mutated_real_quotes_only_our_errors_out(seed: int, edits: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(_SEEDS[seed])
    for off, val in edits:
        if off < len(raw):
            raw[off] = val
    try:
        q = parse_quote(bytes(raw[:cut]))
    except QuoteError:
        return
    assert q.signed_length <= len(raw)

