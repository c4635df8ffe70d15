"""Tampering: any change to a protected file is an error of ours, or provably harmless.

What AES-GCM does *not* cover (spec §1.3), and so may change without detection:
  * byte 9, the minor version (never checked, as in Gramine);
  * the zero padding after the encrypted metadata: bytes 3942..4095 (v1) or 3943..4095 (v2).
Every other byte of node 0 is checked: the magic and major version by parsing (and a major flip
1 <-> 2 shifts the ciphertext so authentication fails), the v2 flags byte by parsing (0x01 =
recovery pending, other bits unknown), the nonce and tag and ciphertext by AES-GCM. Every byte of
every MHT and data node is covered by its GCM tag. Not detectable by any reader without outside
state: nodes appended past the last needed node (ignored, as Gramine ignores them) and rolling a
whole file back to an older version encrypted with the same key and path.
"""

from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teeserve import TeeserveError, pf
from teeserve.pf import _tree

KEY = bytes(range(16))
NODE = 4096
PLAIN = os.urandom(3072 + 2 * NODE + 100)  # node 0, root MHT (1), data nodes 0..2 (2, 3, 4)
FILES = {v: pf.encrypt_bytes(PLAIN, KEY, "enc/f.bin", format_version=v) for v in (1, 2)}


def undetected(version: int, offset: int) -> bool:
    return offset == 9 or (3942 + (version - 1)) <= offset < NODE


def _outcome(blob: bytes) -> bytes | pf.ProtectedFileError:
    try:
        return pf.decrypt_bytes(blob, KEY, expected_path="enc/f.bin")
    except pf.ProtectedFileError as exc:
        return exc


def _flip(blob: bytes, offset: int, mask: int) -> bytes:
    b = bytearray(blob)
    b[offset] ^= mask
    return bytes(b)


@pytest.mark.parametrize("version", [1, 2])
def test_every_single_bit_flip_in_a_small_file(version: int) -> None:
    """Sweep: each byte with one bit flipped (rotating which bit); v2 only strides past node 0."""
    blob = FILES[version]
    assert len(blob) == 5 * NODE
    offsets = range(len(blob)) if version == 1 else [*range(NODE), *range(NODE, len(blob), 7)]
    for offset in offsets:
        result = _outcome(_flip(blob, offset, 1 << (offset % 8)))
        if undetected(version, offset):
            assert result == PLAIN, offset
            continue
        assert isinstance(result, pf.ProtectedFileError), offset
        node = offset // NODE
        if node == 0:
            assert not isinstance(result, pf.TamperedNode)
        else:  # the reader names the physical node and its kind
            assert isinstance(result, pf.TamperedNode), (offset, result)
            assert result.node_number == node
            assert result.kind == ("MHT" if node == 1 else "data")


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([1, 2]),
    offset=st.integers(0, 5 * NODE - 1),
    mask=st.integers(1, 255),
)
def test_any_byte_change_is_an_error_or_harmless(version: int, offset: int, mask: int) -> None:
    result = _outcome(_flip(FILES[version], offset, mask))
    if isinstance(result, bytes):
        assert result == PLAIN and undetected(version, offset)  # never wrong plaintext
    else:
        assert not undetected(version, offset)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=3 * NODE), prefix=st.sampled_from([b"", b"GRAFS_PF", b"GRAFS_PF\x01\x00"]))
def test_garbage_raises_only_our_errors(garbage: bytes, prefix: bytes) -> None:
    blob = prefix + garbage
    with pytest.raises(pf.ProtectedFileError):  # and nothing but ours: no struct.error, IndexError...
        pf.decrypt_bytes(blob, KEY)
    with pytest.raises(TeeserveError):
        pf.open_reader(io.BytesIO(blob), KEY)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), version=st.sampled_from([1, 2]))
def test_garbage_after_a_real_header_raises_only_our_errors(seed: int, version: int) -> None:
    garbage = random.Random(seed).randbytes(NODE)
    blob = FILES[version][:58] + garbage[58:] + FILES[version][NODE:]
    with pytest.raises(pf.ProtectedFileError):
        pf.decrypt_bytes(blob, KEY)


def test_structural_tampering() -> None:
    blob = FILES[1]
    nodes = [blob[i : i + NODE] for i in range(0, len(blob), NODE)]
    swapped = b"".join([nodes[0], nodes[1], nodes[3], nodes[2], nodes[4]])
    with pytest.raises(pf.TamperedNode) as info:
        pf.decrypt_bytes(swapped, KEY)
    assert info.value.node_number == 2
    with pytest.raises(pf.TruncatedFile, match="needs 5"):
        pf.decrypt_bytes(blob[: 4 * NODE], KEY)
    with pytest.raises(pf.TruncatedFile, match="not a whole number"):
        pf.decrypt_bytes(blob[:-1], KEY)
    with pytest.raises(pf.NotProtectedFile):
        pf.decrypt_bytes(b"", KEY)
    # appended nodes are ignored, as Gramine ignores them (documented above)
    assert pf.decrypt_bytes(blob + nodes[4], KEY) == PLAIN
    # a node copied from another file with the same key is still caught by its parent's tag
    other = pf.encrypt_bytes(PLAIN, KEY, "enc/f.bin")
    with pytest.raises(pf.TamperedNode):
        pf.decrypt_bytes(blob[: 3 * NODE] + other[3 * NODE : 4 * NODE] + blob[4 * NODE :], KEY)


def test_recovery_flag_is_refused() -> None:
    flagged = FILES[2][:58] + b"\x01" + FILES[2][59:]
    with pytest.raises(pf.RecoveryPending, match="recovery"):
        pf.decrypt_bytes(flagged, KEY)
    assert issubclass(pf.RecoveryPending, pf.ProtectedFileError)


def test_tampered_data_is_never_returned_by_ranges() -> None:
    blob = bytearray(FILES[1])
    d = 1
    blob[_tree.data_physical(d) * NODE + 17] ^= 0x40
    with pf.open_reader(io.BytesIO(bytes(blob)), KEY) as reader:
        assert reader.read(0, 3072 + NODE) == PLAIN[: 3072 + NODE]  # nodes before it are fine
        with pytest.raises(pf.TamperedNode) as info:
            reader.read(3072 + NODE, 10)
        assert (info.value.kind, info.value.logical, info.value.node_number) == ("data", 1, 3)
