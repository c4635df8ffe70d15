"""Decryption and verification of the known-answer files made by Gramine's gramine-sgx-pf-crypt."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pf_helpers import NEGATIVE, VALID, plaintext_of

from teeserve import pf

ids = [e["file"] for e in VALID]


def test_manifest_lists_thirteen_valid_and_three_negative_vectors() -> None:
    assert len(VALID) == 13 and len(NEGATIVE) == 3


@pytest.mark.parametrize("entry", VALID + NEGATIVE, ids=[e["file"] for e in VALID + NEGATIVE])
def test_vector_file_is_intact(entry: dict[str, Any], pf_vectors: Path) -> None:
    data = (pf_vectors / entry["file"]).read_bytes()
    assert len(data) == entry["ciphertext_size"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256_ciphertext"]


def test_both_key_files_hold_the_same_key(pf_vectors: Path, vector_key: bytes) -> None:
    assert pf.load_wrap_key(pf_vectors / "wrap_key") == vector_key
    assert pf.load_wrap_key(pf_vectors / "wrap_key.hex") == vector_key
    assert vector_key.hex() == "b45ec9a80acbfd1ebe7cd0169f1afac4"


@pytest.mark.parametrize("entry", VALID, ids=ids)
def test_valid_vector_decrypts(entry: dict[str, Any], pf_vectors: Path, vector_key: bytes) -> None:
    path = pf_vectors / entry["file"]
    expected = plaintext_of(entry)
    assert hashlib.sha256(expected).hexdigest() == entry["sha256_plaintext"]
    with pf.open_reader(path, vector_key) as reader:
        assert reader.size == entry["size"]
        assert reader.stored_path == entry["embedded_path"]
        assert reader.format_version == 1
        assert reader.read_all() == expected
    assert pf.decrypt_bytes(path.read_bytes(), vector_key, expected_path=entry["embedded_path"]) == expected
    assert pf.is_protected_file(path) and pf.is_protected_file(path.read_bytes())


@pytest.mark.parametrize("entry", VALID, ids=ids)
def test_valid_vector_by_ranges(entry: dict[str, Any], pf_vectors: Path, vector_key: bytes) -> None:
    expected = plaintext_of(entry)
    size = entry["size"]
    edges = {0, 1, 3071, 3072, 3073, 7167, 7168, 7169, size - 1, size, size + 1}
    edges |= {3072 + 4096 * k + d for k in (1, 95, 96, 97, 3000) for d in (-1, 0, 1)}
    edges = sorted(e for e in edges if 0 <= e <= size + 1)
    with pf.open_reader(pf_vectors / entry["file"], vector_key, expected_path=entry["embedded_path"]) as r:
        for start in edges:
            for length in (0, 1, 2, 4095, 4096, 4097, 10000):
                assert r.read(start, length) == expected[start : start + length], (start, length)
        # whole file in odd-sized chunks, in order
        step = 12345
        assert b"".join(r.read(o, step) for o in range(0, size, step)) == expected


@pytest.mark.parametrize("entry", VALID, ids=ids)
def test_wrong_expected_path_is_refused(entry: dict[str, Any], pf_vectors: Path, vector_key: bytes) -> None:
    wrong = "./" + entry["embedded_path"]  # Gramine compares byte for byte: './a.bin' is not 'a.bin'
    with pytest.raises(pf.PathMismatch) as info:
        pf.open_reader(pf_vectors / entry["file"], vector_key, expected_path=wrong)
    assert info.value.stored == entry["embedded_path"] and info.value.expected == wrong
    assert entry["file"] in str(info.value)


def test_wrong_key_is_reported_as_wrong_key_or_corrupt(pf_vectors: Path, vector_key: bytes) -> None:
    other = bytes(b ^ 0x80 for b in vector_key)
    with pytest.raises(pf.WrongKeyOrCorruptMetadata, match="wrap key is wrong"):
        pf.open_reader(pf_vectors / "files" / "a.bin", other)


NEGATIVE_ERRORS = {
    "negative/data_node_flip.bin": pf.TamperedNode,
    "negative/metadata_ciphertext_flip.bin": pf.WrongKeyOrCorruptMetadata,
    "negative/truncated_10000.bin": pf.TruncatedFile,
}


@pytest.mark.parametrize("entry", NEGATIVE, ids=[e["file"] for e in NEGATIVE])
def test_negative_vector_fails_with_the_right_error(
    entry: dict[str, Any], pf_vectors: Path, vector_key: bytes, tmp_path: Path
) -> None:
    path = pf_vectors / entry["file"]
    cls = NEGATIVE_ERRORS[entry["file"]]
    for expected_path in (None, entry["embedded_path"]):
        with pytest.raises(cls) as info:
            with pf.open_reader(path, vector_key, expected_path=expected_path) as r:
                r.read_all()
        assert str(path) in str(info.value)
    with pytest.raises(cls):
        pf.decrypt_bytes(path.read_bytes(), vector_key)
    with pytest.raises(cls):
        pf.decrypt_file(path, tmp_path / "out.bin", vector_key)
    assert list(tmp_path.iterdir()) == []  # no partial output, no temporary file left behind
    if cls is pf.TamperedNode:
        assert info.value.node_number == entry["mutation"]["physical_node"] == 2
        assert info.value.kind == "data" and info.value.logical == 0
        assert "physical node 2" in str(info.value)


def test_sniffing_does_not_need_the_key(pf_vectors: Path) -> None:
    assert not pf.is_protected_file(pf_vectors / "negative" / "truncated_10000.bin")
    assert not pf.is_protected_file(pf_vectors / "manifest.json")
    assert not pf.is_protected_file(pf_vectors / "does-not-exist")
    assert not pf.is_protected_file(b"")
    assert not pf.is_protected_file(b"GRAFS_PF" + bytes(4088 + 1))
    with open(pf_vectors / "files" / "a.bin", "rb") as fh:
        fh.seek(100)
        assert pf.is_protected_file(fh)
        assert fh.tell() == 100  # position restored
