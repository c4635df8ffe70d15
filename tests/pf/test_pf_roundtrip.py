"""Write → read round trips at every node boundary, for format versions 1 and 2."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teeserve import pf
from teeserve.pf import _file, _tree

KEY = bytes(range(16))
NODE = 4096
ROOT_FULL = 3072 + 96 * NODE  # root MHT exactly full
TWO_LEVEL = 3072 + (96 * 33 + 1) * NODE  # MHT #33 exists: a child of MHT #1, the second tree level
SIZES = [0, 1, 3071, 3072, 3073, 7168, 7169, ROOT_FULL, ROOT_FULL + 1, TWO_LEVEL]


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_in_memory(size: int, version: int) -> None:
    data = _data(size)
    blob = pf.encrypt_bytes(data, KEY, "models/m.bin", format_version=version)
    assert len(blob) == _tree.host_size(size)
    assert blob[8] == version and pf.is_protected_file(blob)
    assert pf.decrypt_bytes(blob, KEY, expected_path="models/m.bin") == data
    with pf.open_reader(io.BytesIO(blob), KEY) as reader:
        assert (reader.size, reader.format_version, reader.stored_path) == (size, version, "models/m.bin")
        for start in sorted({0, size // 2, max(size - 5000, 0), max(size - 1, 0)}):
            assert reader.read(start, 9000) == data[start : start + 9000]


@pytest.mark.parametrize("version", [1, 2])
def test_two_level_tree_through_files(tmp_path: Path, version: int) -> None:
    data = _data(TWO_LEVEL + 12345)
    (tmp_path / "plain").write_bytes(data)
    seen: list[int] = []
    bound = pf.encrypt_file(
        tmp_path / "plain", tmp_path / "enc", KEY, format_version=version, progress=seen.append
    )
    assert sum(seen) == len(data)
    assert bound == pf.normalize_path(str(tmp_path / "enc"))
    assert (tmp_path / "enc").stat().st_size == _tree.host_size(len(data))
    pf.decrypt_file(tmp_path / "enc", tmp_path / "dec", KEY, expected_path=bound)
    assert (tmp_path / "dec").read_bytes() == data
    assert (tmp_path / "dec").stat().st_mode & 0o777 == 0o600
    with pf.open_reader(tmp_path / "enc", KEY) as reader:  # random access across MHT #1 → #33
        for d in (0, 95, 96, 3167, 3168, 3169, _tree.data_node_count(len(data)) - 1):
            off = _tree.data_offset(d) - 7
            assert reader.read(off, 20) == data[off : off + 20]


class _Recorder(io.BytesIO):
    """Records the physical node of every write, to check the sealing order."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[int] = []

    def write(self, b) -> int:  # type: ignore[no-untyped-def,override]
        self.nodes.append(self.tell() // NODE)
        return super().write(b)


def test_writer_seals_children_before_parents_and_node0_last() -> None:
    size = TWO_LEVEL
    rec = _Recorder()
    _file.write_protected(io.BytesIO(_data(size)), size, rec, KEY, b"p")
    order = {node: i for i, node in enumerate(rec.nodes)}
    nmht, ndata = _tree.mht_node_count(size), _tree.data_node_count(size)
    assert rec.nodes[-1] == 0 and rec.nodes.count(0) == 1
    for m in range(nmht):
        mine = order[_tree.mht_physical(m)]
        first_data = _tree.data_nodes_of_mht(m, ndata).start
        assert order[_tree.data_physical(first_data)] < mine  # data runs are written as one write
        for child in _tree.children_of_mht(m, nmht):
            assert order[_tree.mht_physical(child)] < mine
    assert pf.decrypt_bytes(rec.getvalue(), KEY) == _data(size)


def test_encrypt_and_decrypt_many_times_give_different_files() -> None:
    a = pf.encrypt_bytes(b"same", KEY, "p")
    b = pf.encrypt_bytes(b"same", KEY, "p")
    assert a != b  # fresh nonce (and node keys) each time, as Gramine does


def test_bound_paths_are_normalized_and_limited() -> None:
    blob = pf.encrypt_bytes(b"x", KEY, "./rel//enc/./f")
    with pf.open_reader(io.BytesIO(blob), KEY) as reader:
        assert reader.stored_path == "rel/enc/f"
    longest = "d/" * 384 + "abc"  # 771 bytes
    assert len(longest) == 771
    assert pf.decrypt_bytes(pf.encrypt_bytes(b"x", KEY, longest), KEY, expected_path=longest) == b"x"
    with pytest.raises(pf.PathTooLong, match="772 bytes"):
        pf.encrypt_bytes(b"x", KEY, longest + "d")
    with pytest.raises(pf.PathTooLong):
        pf.encrypt_bytes(b"x", KEY, "a\0b")
    with pytest.raises(pf.PathTooLong):
        pf.encrypt_bytes(b"x", KEY, "./")
    non_ascii = "modèles/naïve.bin"
    assert pf.decrypt_bytes(pf.encrypt_bytes(b"x", KEY, non_ascii), KEY, expected_path=non_ascii) == b"x"


def test_key_argument_misuse_raises_standard_errors() -> None:
    with pytest.raises(TypeError):
        pf.encrypt_bytes(b"x", "0" * 16, "p")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pf.encrypt_bytes(b"x", bytes(32), "p")
    with pytest.raises(ValueError):
        pf.encrypt_bytes(b"x", KEY, "p", format_version=3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(
        st.integers(0, 3 * NODE),
        st.tuples(st.integers(0, 12), st.sampled_from((-1, 0, 1))).map(
            lambda t: max(0, 3072 + t[0] * NODE + t[1])
        ),
        st.integers(3072, 3072 + 100 * NODE),
    ),
    version=st.sampled_from([1, 2]),
)
def test_round_trip_property(size: int, version: int) -> None:
    data = os.urandom(max(size, 0))
    blob = pf.encrypt_bytes(data, KEY, "p", format_version=version)
    assert len(blob) == _tree.host_size(len(data))
    assert pf.decrypt_bytes(blob, KEY) == data


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_reader_ranges_property(data: st.DataObject) -> None:
    size = data.draw(st.integers(0, 3072 + 6 * NODE))
    plain = random.Random(size).randbytes(size)
    blob = pf.encrypt_bytes(plain, KEY, "p")
    with pf.open_reader(io.BytesIO(blob), KEY) as reader:
        for _ in range(5):
            start = data.draw(st.integers(0, size + 10))
            length = data.draw(st.integers(0, 3 * NODE))
            assert reader.read(start, length) == plain[start : start + length]


def test_closed_reader_refuses_to_read(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(pf.encrypt_bytes(_data(20000), KEY, "f"))
    with pf.open_reader(tmp_path / "f", KEY) as reader:
        assert reader.read(5000, 10) == _data(20000)[5000:5010]
        assert "size=20000" in repr(reader)
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 10)
    with pytest.raises(ValueError, match="closed"):
        reader.read_all()


def test_file_paths_stream_in_constant_memory(tmp_path: Path) -> None:
    """encrypt_file / decrypt_file hold one group of nodes, never the file (here 2 MiB vs 13 MB)."""
    import tracemalloc

    size = TWO_LEVEL
    with open(tmp_path / "plain", "wb") as fh:
        for _ in range(size // (1 << 20) + 1):
            fh.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        pf.encrypt_file(tmp_path / "plain", tmp_path / "enc", KEY)
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pf.decrypt_file(tmp_path / "enc", tmp_path / "dec", KEY)
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(tmp_path / "plain") > 13_000_000
    assert enc_peak < 2 << 20 and dec_peak < 2 << 20, (enc_peak, dec_peak)
    assert (tmp_path / "dec").read_bytes() == (tmp_path / "plain").read_bytes()
