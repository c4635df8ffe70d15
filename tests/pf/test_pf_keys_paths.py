"""Wrap keys (both file forms), Gramine's path normalizer, and the public surface of teeserve.pf."""

from __future__ import annotations

from pathlib import Path

import pytest

import teeserve.pf
from teeserve import TeeserveError, pf
from teeserve._io import OutputExists

KEY = bytes.fromhex("b45ec9a80acbfd1ebe7cd0169f1afac4")


@pytest.mark.parametrize(
    "data",
    [KEY, KEY.hex().encode(), KEY.hex().encode() + b"\n", KEY.hex().upper().encode() + b"\r\n"],
    ids=["raw", "hex", "hex-newline", "HEX-crlf"],
)
def test_accepted_key_forms(data: bytes) -> None:
    assert pf.parse_wrap_key(data, "k") == KEY


@pytest.mark.parametrize(
    "data, found",
    [
        (KEY[:15], "15 bytes"),
        (KEY + b"\n", "17 bytes"),
        (KEY.hex()[:31].encode(), "31 hex characters"),
        (KEY.hex().encode() + b"\n\n", "whitespace"),
        (b"z" * 32, "32 bytes that are not a hex string"),
        (b"", "0 bytes"),
        (b"  " + KEY.hex().encode() + b"\n", "whitespace"),
    ],
)
def test_rejected_key_forms_name_the_file_and_never_the_key(data: bytes, found: str) -> None:
    with pytest.raises(pf.WrapKeyError) as info:
        pf.parse_wrap_key(data, "keys/wrap_key")
    msg = str(info.value)
    assert msg.startswith("keys/wrap_key: ") and found in msg
    assert KEY.hex()[:8] not in msg.lower() and "b45e" not in msg.lower()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(pf.WrapKeyError, match="missing: cannot read"):
        pf.load_wrap_key(tmp_path / "missing")
    big = tmp_path / "big"
    big.write_bytes(b"0" * 10_000)
    with pytest.raises(pf.WrapKeyError, match="big: not a wrap key"):
        pf.load_wrap_key(big)


def test_write_and_load_both_forms(tmp_path: Path) -> None:
    raw, hexf = tmp_path / "raw", tmp_path / "hex"
    pf.write_wrap_key(raw, KEY)
    pf.write_wrap_key(hexf, KEY, hex=True)
    assert raw.read_bytes() == KEY and hexf.read_text() == KEY.hex() + "\n"
    for p in (raw, hexf):
        assert p.stat().st_mode & 0o777 == 0o600
        assert pf.load_wrap_key(p) == KEY
    with pytest.raises(OutputExists):
        pf.write_wrap_key(raw, bytes(16))
    assert raw.read_bytes() == KEY
    pf.write_wrap_key(raw, bytes(16), force=True)
    assert raw.read_bytes() == bytes(16)
    with pytest.raises(ValueError):
        pf.write_wrap_key(tmp_path / "short", b"short")
    assert not (tmp_path / "short").exists()


def test_new_wrap_keys_are_fresh() -> None:
    keys = {pf.new_wrap_key() for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == pf.WRAP_KEY_SIZE == 16 for k in keys)


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("./rel//enc", "rel/enc"),  # the spec's examples
        ("/a/./b/../c", "/a/c"),
        ("../x", "../x"),
        ("enc_files/input.txt", "enc_files/input.txt"),
        ("a/b/", "a/b"),
        ("a/../../x", "../x"),
        ("../../x/../y", "../../y"),
        ("/../x", "/x"),
        ("/..", "/"),
        ("/", "/"),
        ("//a//b", "/a/b"),
        (".", ""),
        ("a/..", ""),
        ("./a/./b/.", "a/b"),
        ("dir/name with space.bin", "dir/name with space.bin"),
        ("a/.../b", "a/.../b"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert pf.normalize_path(raw) == normalized
    assert pf.normalize_path(normalized) == normalized  # idempotent
    assert pf.normalize_path(Path(raw) if raw else raw) == pf.normalize_path(str(Path(raw)))


def test_public_surface() -> None:
    public = {n for n in dir(teeserve.pf) if not n.startswith("_")} - {"annotations"}
    assert set(pf.__all__) == public
    for name in [
        "WRAP_KEY_SIZE", "new_wrap_key", "load_wrap_key", "parse_wrap_key", "write_wrap_key",
        "normalize_path", "is_protected_file", "open_reader", "decrypt_bytes", "encrypt_bytes",
        "encrypt_file", "decrypt_file", "encrypt_tree", "ProtectedFileError", "NotProtectedFile",
        "TruncatedFile", "UnsupportedVersion", "RecoveryPending", "WrongKeyOrCorruptMetadata",
        "TamperedNode", "PathMismatch", "WrapKeyError", "Reader",
    ]:
        assert name in pf.__all__, name
    for name in pf.__all__:
        obj = getattr(pf, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, pf.ProtectedFileError) and issubclass(obj, TeeserveError)
