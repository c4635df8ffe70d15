"""The I/O shell of protected files: a verifying reader and a streaming writer over file objects.

Strategy. Both walk the MHT tree depth first, one *group* at a time: MHT node ``m`` and its (up to)
96 data nodes are contiguous on the host (physical nodes ``1 + 97 m`` ...), so a group is one
positional read or write. Memory is constant in the file size: one group of buffers plus the chain
of open MHT nodes from the root to the current one (a few per tree level).

* Reading verifies in tree order (verify before use): the metadata node under the key derived from
  the wrap key, the root MHT under the key/tag in the metadata, every other MHT under its verified
  parent's entry, every data node under its verified MHT's entry. Plaintext reaches the caller (or
  the output file) only after its node and all its ancestors authenticated.
* Writing seals bottom-up: a group's data nodes first, then (after all its child subtrees, which
  fill its child slots) the MHT node itself, and the metadata node last, after everything else is
  on disk (spec §1.9). Output is written with ``pwrite`` at each node's offset.

Files with a real descriptor use ``os.preadv``/``os.pwritev`` to scatter nodes straight into
4112-byte slots (4096 bytes of ciphertext + room for the 16-byte tag AES-GCM wants next to it), so
no node is copied on the hot path; other file objects (``BytesIO``) fall back to seek + copy.
"""

from __future__ import annotations

import io
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _tree
from ._crypto import ZERO_IV, InvalidTag, derive_metadata_key, open_into, seal
from ._errors import (
    PathMismatch,
    SourceChanged,
    TamperedNode,
    TruncatedFile,
    WrongKeyOrCorruptMetadata,
)
from ._format import (
    DATA_ENTRIES_PER_MHT,
    ENTRY_SIZE,
    FILE_ID,
    INLINE_DATA_SIZE,
    KEY_SIZE,
    METADATA_PLAIN_SIZE,
    NODE_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    Header,
    Metadata,
    build_metadata,
    build_node0,
    parse_header,
    parse_metadata,
)

__all__ = ["Reader", "write_protected", "Progress", "Rand"]

Progress = Callable[[int], object]
Rand = Callable[[int], bytes]

_SLOT = NODE_SIZE + TAG_SIZE  # one node's ciphertext followed by its tag, as AES-GCM wants them
_CHILD_BASE = DATA_ENTRIES_PER_MHT * ENTRY_SIZE  # offset of the child-MHT entries in an MHT node
_MHT_CACHE = 64  # verified MHT nodes kept for random access (256 KiB)


class _Positional:
    """Positional reads and writes of node runs on any binary file object."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.fd: int | None = None
        try:
            fd = fh.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self.fd = fd
        except (AttributeError, OSError, io.UnsupportedOperation):
            pass

    def size(self) -> int:
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        return self.fh.seek(0, io.SEEK_END)

    def readv(self, views: list[memoryview], offset: int) -> int:
        """Fill ``views`` in order from ``offset``; returns the bytes read (short at EOF)."""
        if self.fd is not None:
            total = 0
            while views:
                n = os.preadv(self.fd, views, offset)
                if n <= 0:
                    break
                total += n
                offset += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views = views[1:]
                if views and n:
                    views = [views[0][n:], *views[1:]]
            return total
        self.fh.seek(offset)
        total = 0
        for v in views:
            n = self.fh.readinto(v) or 0
            total += n
            if n < len(v):
                break
        return total

    def writev(self, views: list[memoryview], offset: int) -> None:
        if self.fd is not None:
            while views:
                n = os.pwritev(self.fd, views, offset)
                offset += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views = views[1:]
                if views and n:
                    views = [views[0][n:], *views[1:]]
            return
        self.fh.seek(offset)
        for v in views:
            self.fh.write(v)


class _Slots:
    """``count`` 4112-byte slots (a node's ciphertext, then room for its tag) and views into them."""

    def __init__(self, count: int) -> None:
        self.buf = bytearray(_SLOT * count)
        v = memoryview(self.buf)
        self.node_views = [v[i * _SLOT : i * _SLOT + NODE_SIZE] for i in range(count)]
        self.full_views = [v[i * _SLOT : (i + 1) * _SLOT] for i in range(count)]
        self.tag_views = [v[i * _SLOT + NODE_SIZE : (i + 1) * _SLOT] for i in range(count)]


class Reader:
    """A verified, read-only view of one protected file (create it with ``pf.open_reader``).

    Attributes: ``size`` (plaintext bytes), ``stored_path`` (the bound path), ``format_version``
    (1 or 2), ``source``. Not thread-safe; nothing is ever written anywhere.
    """

    def __init__(
        self,
        fh: BinaryIO,
        key: bytes,
        *,
        source: str,
        expected_path: str | None = None,
        owns: bool = False,
    ) -> None:
        self.source = source
        self._fh = fh
        self._owns = owns
        self._closed = False
        try:
            self._open(key, expected_path)
        except BaseException:
            self.close()
            raise

    def _open(self, key: bytes, expected_path: str | None) -> None:
        self._io = _Positional(self._fh)
        host = self._io.size()
        head = bytearray(NODE_SIZE)
        got = self._io.readv([memoryview(head)], 0)
        # §1.9 read order, except that a file without the magic is reported as "not a protected
        # file" rather than as a bad size: that is the more useful message for a wrong input.
        if head.startswith(FILE_ID) and host % NODE_SIZE:
            raise TruncatedFile(self.source, f"{host} bytes is not a whole number of 4096-byte nodes")
        header = parse_header(memoryview(head)[:got], self.source)
        if host % NODE_SIZE or host == 0:
            raise TruncatedFile(self.source, f"{host} bytes is not a whole number of 4096-byte nodes")
        self.format_version = header.version
        start = header.ciphertext_offset
        sealed = bytearray(head[start : start + METADATA_PLAIN_SIZE])
        sealed += header.tag
        plain = bytearray(METADATA_PLAIN_SIZE)
        try:
            open_into(derive_metadata_key(key, header.nonce), sealed, plain)
        except InvalidTag:
            raise WrongKeyOrCorruptMetadata(self.source) from None
        meta = parse_metadata(plain, self.source)
        self._meta = meta
        self.size = meta.size
        self.stored_path = os.fsdecode(meta.path)
        if expected_path is not None and meta.path != os.fsencode(expected_path):
            raise PathMismatch(self.source, self.stored_path, expected_path)
        self._ndata = _tree.data_node_count(meta.size)
        self._nmht = _tree.mht_node_count(meta.size)
        needed = 1 + self._ndata + self._nmht
        if host // NODE_SIZE < needed:
            raise TruncatedFile(
                self.source,
                f"has {host // NODE_SIZE} nodes but its size field ({meta.size} bytes) needs {needed}",
            )
        self._slot = bytearray(_SLOT)
        self._mht: OrderedDict[int, bytearray] = OrderedDict()
        self._last_data: tuple[int, bytearray] | None = None
        self._run: _Slots | None = None
        if self._nmht:
            self._root = self._open_node(1, "MHT", 0, meta.root_key, meta.root_tag)

    # -- context manager -------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        if self._owns:
            self._fh.close()

    def _check_open(self) -> None:
        if self._closed:  # the descriptor number may already belong to another file
            raise ValueError(f"reader of {self.source} is closed")

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<pf.Reader {self.source!r} size={self.size} version={self.format_version} "
            f"path={self.stored_path!r}>"
        )

    # -- random access -----------------------------------------------------------------------------
    def _open_node(self, phys: int, kind: str, logical: int, key: bytes, tag: bytes) -> bytearray:
        slot = memoryview(self._slot)
        if self._io.readv([slot[:NODE_SIZE]], phys * NODE_SIZE) != NODE_SIZE:
            raise TruncatedFile(self.source, f"ends inside physical node {phys}")
        slot[NODE_SIZE:] = tag
        out = bytearray(NODE_SIZE)
        try:
            open_into(key, slot, out)
        except InvalidTag:
            raise TamperedNode(self.source, phys, kind, logical) from None
        return out

    def _mht_node(self, m: int) -> bytearray:
        if m == 0:
            return self._root
        node = self._mht.get(m)
        if node is not None:
            self._mht.move_to_end(m)
            return node
        parent, slot = _tree.parent_of_mht(m)
        entry = self._mht_node(parent)[_CHILD_BASE + ENTRY_SIZE * slot :][:ENTRY_SIZE]
        phys = _tree.mht_physical(m)
        node = self._open_node(phys, "MHT", m, bytes(entry[:KEY_SIZE]), bytes(entry[KEY_SIZE:]))
        self._mht[m] = node
        if len(self._mht) > _MHT_CACHE:
            self._mht.popitem(last=False)
        return node

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` plaintext bytes from ``offset`` (fewer at end of file), all verified.

        Raises:
            TamperedNode: a node on the way failed authentication.
            TruncatedFile: the host file shrank since it was opened.
        """
        self._check_open()
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        # Like read_all: decrypt into a BytesIO's buffer and hand its bytes over without a copy.
        bio = io.BytesIO()
        bio.seek(end - offset - 1)
        bio.write(b"\0")
        with bio.getbuffer() as out:
            pos = offset
            if pos < INLINE_DATA_SIZE:
                stop = min(end, INLINE_DATA_SIZE)
                out[: stop - pos] = self._meta.inline[pos:stop]
                pos = stop
            while pos < end:  # one run of data nodes per MHT group
                d = (pos - INLINE_DATA_SIZE) // NODE_SIZE
                m = d // DATA_ENTRIES_PER_MHT
                last = min((end - 1 - INLINE_DATA_SIZE) // NODE_SIZE, DATA_ENTRIES_PER_MHT * (m + 1) - 1)
                self._read_run(d, last, out, offset, end)
                pos = min(end, _tree.data_offset(last + 1))
        return bio.getvalue()

    def _read_run(self, first: int, last: int, out: memoryview, offset: int, end: int) -> None:
        """Verify data nodes ``first..last`` (one MHT group) and copy their part of [offset, end)."""
        if first == last and self._last_data is not None and self._last_data[0] == first:
            node = self._last_data[1]
            start = _tree.data_offset(first)
            lo, hi = max(start, offset), min(start + NODE_SIZE, end)
            out[lo - offset : hi - offset] = node[lo - start : hi - start]
            return
        mht = memoryview(self._mht_node(first // DATA_ENTRIES_PER_MHT))
        n = last - first + 1
        if self._run is None:
            self._run = _Slots(DATA_ENTRIES_PER_MHT)
        run = self._run
        if self._io.readv(run.node_views[:n], _tree.data_physical(first) * NODE_SIZE) != n * NODE_SIZE:
            raise TruncatedFile(self.source, f"ends inside data node #{last}")
        for i in range(n):
            d = first + i
            e = ENTRY_SIZE * (d % DATA_ENTRIES_PER_MHT)
            run.tag_views[i][:] = mht[e + KEY_SIZE : e + ENTRY_SIZE]
            start = _tree.data_offset(d)
            lo, hi = max(start, offset), min(start + NODE_SIZE, end)
            whole = lo == start and hi == start + NODE_SIZE
            target = out[start - offset : start - offset + NODE_SIZE] if whole else bytearray(NODE_SIZE)
            try:
                AESGCM(mht[e : e + KEY_SIZE]).decrypt_into(ZERO_IV, run.full_views[i], None, target)
            except InvalidTag:
                out[:] = bytes(len(out))
                raise TamperedNode(self.source, _tree.data_physical(d), "data", d) from None
            if not whole:  # a partly read node: keep it for the next small read
                out[lo - offset : hi - offset] = memoryview(target)[lo - start : hi - start]
                self._last_data = (d, target)  # type: ignore[assignment]

    def read_all(self) -> bytes:
        """The whole plaintext, verified node by node (streamed in tree order, in memory only)."""
        # The nodes are decrypted straight into a BytesIO's buffer, whose getvalue() then hands its
        # bytes object over without a copy: one allocation of the result, no second pass over it.
        self._check_open()
        total = INLINE_DATA_SIZE + NODE_SIZE * self._ndata
        bio = io.BytesIO()
        bio.seek(total - 1)
        bio.write(b"\0")
        with bio.getbuffer() as view:
            view[:INLINE_DATA_SIZE] = self._meta.inline
            for group in self._groups(into=view):
                del group  # hold no slice of ``view``: the buffer is resized below
        bio.truncate(self.size)
        return bio.getvalue()

    def copy_to(self, out: BinaryIO, progress: Progress | None = None) -> None:
        """Write the whole verified plaintext to ``out`` (a seekable binary file object).

        Groups are written at their offsets in tree order, i.e. not sequentially; ``out`` holds the
        complete plaintext only once this returns (callers use ``_io.atomic_output``).
        """
        self._check_open()
        sink = _Positional(out)
        if sink.fd is not None:
            out.flush()
        sink.writev([memoryview(self._meta.inline)[: min(self.size, INLINE_DATA_SIZE)]], 0)
        if progress is not None:
            progress(min(self.size, INLINE_DATA_SIZE))
        for d0, n, plain in self._groups():
            start = _tree.data_offset(d0)
            length = min(n * NODE_SIZE, self.size - start)
            sink.writev([plain[:length]], start)
            if progress is not None:
                progress(length)

    def _groups(self, into: memoryview | None = None) -> Iterator[tuple[int, int, memoryview]]:
        """Yield (first data node, count, verified plaintext view) per MHT group, depth first.

        Without ``into`` the view is one reused group buffer: consume it before resuming. With
        ``into`` (a view of the whole plaintext rounded up to whole nodes) every node is decrypted
        in place at its offset and the yielded view is that part of ``into``.
        """
        self._check_open()
        if not self._nmht:
            return
        group = _Slots(1 + DATA_ENTRIES_PER_MHT)  # an MHT node and its data nodes
        node_views, full_views, tag_views = group.node_views, group.full_views, group.tag_views
        plain = bytearray(NODE_SIZE * DATA_ENTRIES_PER_MHT)
        pv = memoryview(plain)
        out_views = [pv[i * NODE_SIZE : (i + 1) * NODE_SIZE] for i in range(DATA_ENTRIES_PER_MHT)]
        mht = bytearray(NODE_SIZE)
        mv = memoryview(mht)
        entries = range(0, DATA_ENTRIES_PER_MHT * ENTRY_SIZE, ENTRY_SIZE)
        key_views = [mv[e : e + KEY_SIZE] for e in entries]
        entry_tags = [mv[e + KEY_SIZE : e + ENTRY_SIZE] for e in entries]
        ndata, nmht, source = self._ndata, self._nmht, self.source
        aesgcm, readv = AESGCM, self._io.readv
        stack = [(0, self._meta.root_key, self._meta.root_tag)]
        while stack:
            m, key, tag = stack.pop()
            data = _tree.data_nodes_of_mht(m, ndata)
            n = len(data)
            phys = _tree.mht_physical(m)
            if readv(node_views[: 1 + n], phys * NODE_SIZE) != (1 + n) * NODE_SIZE:
                raise TruncatedFile(source, f"ends inside the nodes of MHT #{m} (physical node {phys}...)")
            tag_views[0][:] = tag
            try:
                open_into(key, full_views[0], mht)
            except InvalidTag:
                raise TamperedNode(source, phys, "MHT", m) from None
            if into is not None:
                pv = into[_tree.data_offset(data.start) :]
                out_views = [pv[i * NODE_SIZE : (i + 1) * NODE_SIZE] for i in range(n)]
            # The hot loop: one AES-GCM open per 4096-byte node, straight into the output view.
            try:
                nodes = zip(key_views[:n], entry_tags, tag_views[1:], full_views[1:], out_views)
                for k, t, slot_tag, sealed, out in nodes:
                    slot_tag[:] = t
                    aesgcm(k).decrypt_into(ZERO_IV, sealed, None, out)
            except InvalidTag:
                bad = next(i for i in range(n) if out_views[i] is out)
                pv[: n * NODE_SIZE] = bytes(n * NODE_SIZE)  # drop every unverified byte of this group
                raise TamperedNode(source, phys + 1 + bad, "data", data.start + bad) from None
            children = _tree.children_of_mht(m, nmht)
            for j in reversed(range(len(children))):
                e = _CHILD_BASE + ENTRY_SIZE * j
                entry = bytes(mht[e : e + ENTRY_SIZE])
                stack.append((children.start + j, entry[:KEY_SIZE], entry[KEY_SIZE:]))
            yield data.start, n, pv


def write_protected(
    src: BinaryIO,
    size: int,
    dst: BinaryIO,
    key: bytes,
    bound_path: bytes,
    *,
    version: int = 1,
    rand: Rand = os.urandom,
    progress: Progress | None = None,
    source: str = "<input>",
) -> None:
    """Encrypt ``size`` bytes of ``src`` (read positionally from offset 0) into ``dst`` as a protected file.

    ``rand(n)`` supplies every random byte, in this order: for each MHT group depth first,
    ``rand(16 * n)`` for its ``n`` data-node keys; after a group's child subtrees, ``rand(16)`` for
    the MHT node's key; finally ``rand(32)`` for the metadata nonce. Tests inject it to reproduce
    known-answer files byte for byte; real files use ``os.urandom``.

    Raises:
        SourceChanged: ``src`` ended before ``size`` bytes.
    """
    if version not in (1, 2):
        raise ValueError(f"format version must be 1 or 2, not {version!r}")
    inp, out = _Positional(src), _Positional(dst)
    if out.fd is not None:
        dst.flush()
    ndata, nmht = _tree.data_node_count(size), _tree.mht_node_count(size)
    inline = bytearray(min(size, INLINE_DATA_SIZE))
    if inp.readv([memoryview(inline)], 0) != len(inline):
        raise SourceChanged(source, "the input file became shorter while it was being encrypted")
    if progress is not None:
        progress(len(inline))

    plain = bytearray(NODE_SIZE * DATA_ENTRIES_PER_MHT)
    pv = memoryview(plain)
    in_views = [pv[i * NODE_SIZE : (i + 1) * NODE_SIZE] for i in range(DATA_ENTRIES_PER_MHT)]
    slots = _Slots(DATA_ENTRIES_PER_MHT)
    ct_views, full_views, slot_tags = slots.node_views, slots.full_views, slots.tag_views
    aesgcm = AESGCM

    def seal_group(m: int) -> tuple[bytes, bytes]:
        """Seal MHT #m's data nodes, then its child subtrees, then MHT #m itself."""
        data = _tree.data_nodes_of_mht(m, ndata)
        n = len(data)
        start = _tree.data_offset(data.start)
        want = min(n * NODE_SIZE, size - start)
        if inp.readv([pv[:want]], start) != want:
            raise SourceChanged(source, "the input file became shorter while it was being encrypted")
        if want < n * NODE_SIZE:
            pv[want : n * NODE_SIZE] = bytes(n * NODE_SIZE - want)  # zero tail of the last node
        mht = bytearray(NODE_SIZE)
        mv = memoryview(mht)
        keys = rand(KEY_SIZE * n)
        # The hot loop: one AES-GCM seal per node into its slot, key and tag into the MHT entry.
        for i, plain_node, sealed, slot_tag in zip(range(n), in_views, full_views, slot_tags):
            k = keys[KEY_SIZE * i : KEY_SIZE * (i + 1)]
            aesgcm(k).encrypt_into(ZERO_IV, plain_node, None, sealed)
            e = ENTRY_SIZE * i
            mv[e : e + KEY_SIZE] = k
            mv[e + KEY_SIZE : e + ENTRY_SIZE] = slot_tag
        out.writev(ct_views[:n], _tree.data_physical(data.start) * NODE_SIZE)
        if progress is not None:
            progress(want)
        for j, child in enumerate(_tree.children_of_mht(m, nmht)):
            ck, ctag = seal_group(child)
            e = _CHILD_BASE + ENTRY_SIZE * j
            mht[e : e + KEY_SIZE] = ck
            mht[e + KEY_SIZE : e + ENTRY_SIZE] = ctag
        mkey = rand(KEY_SIZE)
        ct, tag = seal(mkey, mht)
        out.writev([memoryview(ct)], _tree.mht_physical(m) * NODE_SIZE)
        return mkey, tag

    root_key = root_tag = bytes(KEY_SIZE)
    if nmht:
        root_key, root_tag = seal_group(0)  # recursion depth: the tree height, log32(nmht)
    meta = build_metadata(
        Metadata(path=bound_path, size=size, root_key=root_key, root_tag=root_tag, inline=bytes(inline))
    )
    nonce = rand(NONCE_SIZE)
    ct, tag = seal(derive_metadata_key(key, nonce), meta)
    node0 = build_node0(Header(version=version, minor=0, nonce=nonce, tag=tag), ct)
    out.writev([memoryview(node0)], 0)  # last: the file is valid only once node 0 is in place
