"""The named-secret extension's framing (sans-IO), and the TEE side's argument checks."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from teeserve import provision
from teeserve._errors import UsageError
from teeserve.attest.evidence import EvidenceError
from teeserve.broker import (
    EXT_REQUEST_MAGIC, ExtensionProtocolError, RequestParser, ResponseParser, encode_request, encode_response,
    obtain_secrets,
)  # fmt: skip

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", min_size=1, max_size=64)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@given(st.lists(NAMES, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_requests_roundtrip_in_any_chunking(names: list[str], cuts: list[int]) -> None:
    wire = b"".join(encode_request(n) for n in names)
    parser = RequestParser()
    got = [n for chunk in _chunks(wire, cuts) for n in parser.feed(chunk)]
    assert got == names


@given(st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=100)), min_size=1, max_size=5),
       st.lists(st.integers(0, 10_000), max_size=8))  # fmt: skip
def test_responses_roundtrip_in_any_chunking(answers: list[bytes | None], cuts: list[int]) -> None:
    wire = b"".join(encode_response(a) for a in answers)
    parser = ResponseParser()
    assert [a for chunk in _chunks(wire, cuts) for a in parser.feed(chunk)] == answers


def test_wire_format() -> None:
    assert encode_request("model-key") == b"TEESERVE_SECRET_REQUEST_V1\0\x00\x09model-key"
    assert encode_response(b"\x01" * 16) == provision.RESPONSE_MAGIC + b"\x00\x00\x00\x10" + b"\x01" * 16
    assert encode_response(None) == provision.RESPONSE_MAGIC + b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "does not start with"),
        (EXT_REQUEST_MAGIC + b"\x00\x00", "outside 1..64"),
        (EXT_REQUEST_MAGIC + b"\x00\x41" + b"a" * 65, "outside 1..64"),
        (EXT_REQUEST_MAGIC + b"\x00\x03a\nb", "characters outside"),
        (EXT_REQUEST_MAGIC + b"\x00\x02" + b"a", None),  # incomplete: waits for more
    ],
)
def test_request_parser_refuses_malformed(data: bytes, message: str | None) -> None:
    parser = RequestParser()
    if message is None:
        assert parser.feed(data) == []
    else:
        with pytest.raises(ExtensionProtocolError, match=message):
            parser.feed(data)


def test_request_parser_bounds_its_buffer() -> None:
    parser = RequestParser(max_buffer=100)
    with pytest.raises(ExtensionProtocolError, match="more than 100 bytes"):
        parser.feed((EXT_REQUEST_MAGIC + b"\x00\x05abcde") * 4)


def test_response_parser_refuses_oversize_and_bad_magic() -> None:
    with pytest.raises(ExtensionProtocolError, match="more than 10"):
        ResponseParser(max_secret=10).feed(provision.RESPONSE_MAGIC + b"\x00\x00\x01\x00")
    with pytest.raises(ExtensionProtocolError, match="does not start"):
        ResponseParser().feed(b"SECRET_PROVISION_RA_TLS_RESPONSE_V2:\0")


@pytest.mark.parametrize("name", ["", "a" * 65, "a b", "ä", "../x"])
def test_bad_names_are_refused_by_the_client(name: str) -> None:
    with pytest.raises(ValueError):
        encode_request(name)


def test_obtain_secrets_argument_and_provider_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="sim_key"):
        asyncio.run(obtain_secrets(tee="sim", broker="127.0.0.1:1", broker_ca=tmp_path / "ca.pem"))
    with pytest.raises(ValueError):
        asyncio.run(obtain_secrets(tee="sim", broker="127.0.0.1:1", broker_ca="ca.pem", secrets=("a b",)))
    with pytest.raises(UsageError, match="unknown TEE"):
        asyncio.run(obtain_secrets(tee="sev", broker="127.0.0.1:1", broker_ca="ca.pem"))
    # not inside Gramine: a clear evidence error at once, not a retry loop
    with pytest.raises(EvidenceError):
        asyncio.run(obtain_secrets(tee="gramine", broker="127.0.0.1:1", broker_ca="ca.pem", deadline=60,
                                   provider_options={"root": tmp_path / "no-dev-attestation"}))  # fmt: skip
