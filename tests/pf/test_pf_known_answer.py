"""Worked examples A and B of spec §1.14: fixed nonce and node keys, so every byte is reproducible.

The node-0 tags and file digests of the spec (marked †) depend on path strings the spec does not
give; everything else (metadata key, node tags, ciphertext bytes) is checked here exactly.
"""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pf_helpers import fixed_rand

from teeserve import pf
from teeserve.pf import _crypto, _file, _format

KDK = bytes(range(16))
NONCE = bytes(range(0x20, 0x40))
ZERO_IV = bytes(12)


def _write(plaintext: bytes, path: bytes, rand: bytes, version: int = 1) -> bytes:
    out = io.BytesIO()
    _file.write_protected(
        io.BytesIO(plaintext), len(plaintext), out, KDK, path, version=version, rand=fixed_rand(rand)
    )
    return out.getvalue()


def test_metadata_key_derivation() -> None:
    assert _crypto.derive_metadata_key(KDK, NONCE).hex() == "70ed96c7236900467f5461579ab272f8"


@pytest.mark.parametrize("version, ct_offset", [(1, 870), (2, 871)])
def test_vector_a_hello(version: int, ct_offset: int) -> None:
    path = b"/an/absolute/path/of/29/bytes"
    assert len(path) == 29
    blob = _write(b"hello", path, NONCE, version)
    assert len(blob) == 4096
    assert blob[:8] == b"GRAFS_PF" and blob[8:10] == bytes([version, 0]) and blob[10:42] == NONCE
    assert blob[ct_offset : ct_offset + 5].hex() == "7bcd0d1d56"
    if version == 2:
        assert blob[58] == 0  # feature flags
    assert blob[3942 + (version - 1) :] == bytes(154 - (version - 1))  # unauthenticated zero padding
    assert pf.decrypt_bytes(blob, KDK, expected_path=path.decode()) == b"hello"
    metadata = AESGCM(_crypto.derive_metadata_key(KDK, NONCE)).decrypt(
        ZERO_IV, blob[ct_offset - 812 : ct_offset - 812 + 3884] + blob[42:58], None
    )
    assert metadata[:30] == path + b"\0" and metadata[772:780] == (5).to_bytes(8, "little")
    assert metadata[780:812] == bytes(32)


def test_vector_a_tag_does_not_depend_on_the_version() -> None:
    path = b"/an/absolute/path/of/29/bytes"
    assert _write(b"hello", path, NONCE, 1)[42:58] == _write(b"hello", path, NONCE, 2)[42:58]


def test_vector_b_5000_bytes() -> None:
    plaintext = bytes((7 * i + 3) % 256 for i in range(5000))
    blob = _write(plaintext, b"/p/of/28/bytes/for/vector/bb", b"\x11" * 16 + b"\x22" * 16 + NONCE)
    assert len(blob) == 3 * 4096
    # node 2 = data node 0 under key 11.., node 1 = root MHT under key 22..
    data_tag = bytes.fromhex("d64f74e001de0e06d6e692c4fe6b6b9c")
    root_tag = bytes.fromhex("cb8f47c73394e1432e771575f25cd46a")
    node2 = AESGCM(b"\x11" * 16).decrypt(ZERO_IV, blob[8192:12288] + data_tag, None)
    assert node2 == plaintext[3072:] + bytes(2168)
    mht = AESGCM(b"\x22" * 16).decrypt(ZERO_IV, blob[4096:8192] + root_tag, None)
    assert mht[:32] == b"\x11" * 16 + data_tag and mht[32:] == bytes(4096 - 32)
    metadata_key = _crypto.derive_metadata_key(KDK, NONCE)
    metadata = AESGCM(metadata_key).decrypt(ZERO_IV, blob[58:3942] + blob[42:58], None)
    assert metadata[772:780].hex() == "8813000000000000"
    assert metadata[780:796] == b"\x22" * 16 and metadata[796:812] == root_tag
    assert metadata[812:] == plaintext[:3072]
    assert pf.decrypt_bytes(blob, KDK) == plaintext


def test_writer_draws_exactly_the_documented_random_bytes() -> None:
    with pytest.raises(AssertionError, match="more random bytes"):
        _write(b"x" * 5000, b"p", b"\x11" * 16 + b"\x22" * 16 + NONCE[:31])


def test_header_parser_rejects_what_gramine_rejects() -> None:
    good = _write(b"hello", b"p", NONCE)
    with pytest.raises(pf.NotProtectedFile, match="GRAPH_PF"):
        _format.parse_header(b"GRAPH_PF" + good[8:], "f")
    with pytest.raises(pf.NotProtectedFile, match="no GRAFS_PF magic"):
        _format.parse_header(b"GRAFS_PX" + good[8:], "f")
    for major in (0, 3, 255):
        with pytest.raises(pf.UnsupportedVersion, match=f"major version {major}"):
            _format.parse_header(good[:8] + bytes([major]) + good[9:], "f")
    v2 = _write(b"hello", b"p", NONCE, 2)
    assert _format.parse_header(v2, "f").version == 2
    with pytest.raises(pf.RecoveryPending, match="recovery"):
        _format.parse_header(v2[:58] + b"\x01" + v2[59:], "f")
    with pytest.raises(pf.UnsupportedVersion, match="flags 0x02"):
        _format.parse_header(v2[:58] + b"\x02" + v2[59:], "f")
