"""Index arithmetic of the protected-file Merkle hash tree (spec §1.2). Pure functions, no I/O.

Strategy: logical data node ``d`` holds plaintext bytes ``[3072 + 4096 d, 3072 + 4096 (d+1))`` and
is owned by MHT node ``d // 96`` (slot ``d % 96``). MHT node ``m`` sits at physical node ``1 + 97 m``,
immediately followed by its (up to) 96 data nodes. MHT nodes form a 32-ary tree numbered in
level order: the parent of ``m >= 1`` is ``(m - 1) // 32`` (child slot ``(m - 1) % 32``); the key
and tag of MHT #0 live in the metadata node.
"""

from __future__ import annotations

from ._format import CHILD_ENTRIES_PER_MHT, DATA_ENTRIES_PER_MHT, INLINE_DATA_SIZE, NODE_SIZE

__all__ = [
    "data_node_count",
    "mht_node_count",
    "node_count",
    "host_size",
    "data_physical",
    "mht_physical",
    "mht_of_data",
    "parent_of_mht",
    "children_of_mht",
    "data_nodes_of_mht",
    "data_offset",
]

_GROUP = DATA_ENTRIES_PER_MHT + 1  # one MHT node and its data nodes, laid out contiguously


def data_node_count(size: int) -> int:
    """Number of data nodes for a plaintext of ``size`` bytes."""
    if size <= INLINE_DATA_SIZE:
        return 0
    return -(-(size - INLINE_DATA_SIZE) // NODE_SIZE)


def mht_node_count(size: int) -> int:
    return -(-data_node_count(size) // DATA_ENTRIES_PER_MHT)


def node_count(size: int) -> int:
    """Physical nodes of a freshly written file of plaintext ``size`` (metadata included)."""
    return 1 + data_node_count(size) + mht_node_count(size)


def host_size(size: int) -> int:
    return NODE_SIZE * node_count(size)


def data_physical(d: int) -> int:
    return d + 2 + d // DATA_ENTRIES_PER_MHT


def mht_physical(m: int) -> int:
    return 1 + _GROUP * m


def mht_of_data(d: int) -> tuple[int, int]:
    """(owning MHT node, slot) of data node ``d``."""
    return divmod(d, DATA_ENTRIES_PER_MHT)


def parent_of_mht(m: int) -> tuple[int, int]:
    """(parent MHT node, child slot) of MHT node ``m >= 1``."""
    if m < 1:
        raise ValueError("MHT #0 has no parent MHT (its key and tag live in the metadata)")
    return divmod(m - 1, CHILD_ENTRIES_PER_MHT)


def children_of_mht(m: int, nmht: int) -> range:
    """The child MHT nodes of ``m`` that exist in a tree of ``nmht`` MHT nodes."""
    first = CHILD_ENTRIES_PER_MHT * m + 1
    return range(min(first, nmht), min(first + CHILD_ENTRIES_PER_MHT, nmht))


def data_nodes_of_mht(m: int, ndata: int) -> range:
    """The data nodes owned by MHT node ``m`` in a file of ``ndata`` data nodes."""
    first = DATA_ENTRIES_PER_MHT * m
    return range(min(first, ndata), min(first + DATA_ENTRIES_PER_MHT, ndata))


def data_offset(d: int) -> int:
    """Plaintext offset of the first byte of data node ``d``."""
    return INLINE_DATA_SIZE + NODE_SIZE * d
