"""The RA-TLS verifier's report-data locator against real DCAP quotes (SGX v3, TDX v4 and v5),
cross-checked with teeserve.attest's full quote parser, and its refusals."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from teeserve.attest import parse_quote
from teeserve.attest.ratls import MalformedEvidence
from teeserve.attest.ratls._quote import report_data_of

REAL_QUOTES = [
    ("automata-dcap-rs/quote_sgx_v3_00606a000000.dat", 3),
    ("intel-qvl-sampledata/quote.dat", 3),
    ("phala-dcap-qvl/sgx_quote", 3),
    ("automata-dcap-rs/quote_tdx_00806f050000.dat", 4),
    ("google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", 4),
    ("intel-qvl-sampledata/tdx/quote.dat", 4),
    ("google-go-tdx-guest/quote_v5_sample.dat", 5),
    ("automata-dcap-attestation/quotes_tdx_quote_5.dat", 5),
]


@pytest.mark.parametrize(("name", "version"), REAL_QUOTES)
def test_report_data_of_real_quotes(vectors_dir: Path, name: str, version: int) -> None:
    raw = (vectors_dir / "dcap" / name).read_bytes()
    assert struct.unpack_from("<H", raw)[0] == version
    assert report_data_of(raw) == parse_quote(raw).report_data


def test_report_data_of_refuses_non_quotes() -> None:
    with pytest.raises(MalformedEvidence, match="shorter"):
        report_data_of(b"\x03\x00" + bytes(100))
    with pytest.raises(MalformedEvidence, match="version 2"):
        report_data_of(b"\x02\x00" + bytes(1000))
    with pytest.raises(MalformedEvidence, match="body type 9"):
        report_data_of(struct.pack("<HHI", 5, 2, 0x81) + bytes(40) + struct.pack("<H", 9) + bytes(1000))
    with pytest.raises(MalformedEvidence, match="truncated"):
        report_data_of(struct.pack("<HHI", 4, 2, 0x81) + bytes(500))
