"""Byte layout of Gramine protected files (spec gramine-formats.md §1.1-§1.6). Pure code, no I/O.

Strategy: this module only maps bytes to values and back. It knows offsets and sizes but no keys:
decryption lives in ``_crypto`` and tree arithmetic in ``_tree``. Parsing never trusts its input:
every failure is one of our ``ProtectedFileError`` classes, naming ``source``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._errors import NotProtectedFile, PathTooLong, ProtectedFileError, RecoveryPending, UnsupportedVersion

__all__ = [
    "NODE_SIZE",
    "KEY_SIZE",
    "TAG_SIZE",
    "NONCE_SIZE",
    "ENTRY_SIZE",
    "INLINE_DATA_SIZE",
    "PATH_FIELD_SIZE",
    "MAX_PATH_BYTES",
    "METADATA_PLAIN_SIZE",
    "DATA_ENTRIES_PER_MHT",
    "CHILD_ENTRIES_PER_MHT",
    "FILE_ID",
    "OLD_FILE_ID",
    "SUPPORTED_VERSIONS",
    "FLAG_PENDING_WRITE",
    "Header",
    "Metadata",
    "parse_header",
    "build_node0",
    "parse_metadata",
    "build_metadata",
    "encode_path",
]

NODE_SIZE = 4096  # §1.1: every host file is a whole number of these
KEY_SIZE = 16  # AES-128: wrap key, metadata key, node keys
TAG_SIZE = 16
NONCE_SIZE = 32  # KDF nonce stored in node 0
ENTRY_SIZE = KEY_SIZE + TAG_SIZE  # one MHT entry: key || tag
INLINE_DATA_SIZE = 3 * NODE_SIZE // 4  # first 3072 plaintext bytes live in the metadata
PATH_FIELD_SIZE = 772  # 260 + 512, NUL-terminated
MAX_PATH_BYTES = PATH_FIELD_SIZE - 1
DATA_ENTRIES_PER_MHT = 96  # §1.5
CHILD_ENTRIES_PER_MHT = 32
assert (DATA_ENTRIES_PER_MHT + CHILD_ENTRIES_PER_MHT) * ENTRY_SIZE == NODE_SIZE

FILE_ID = b"GRAFS_PF"  # u64 LE 0x46505F5346415247
OLD_FILE_ID = b"GRAPH_PF"  # Graphene before 2021-09-05; unreadable by every Gramine release
SUPPORTED_VERSIONS = (1, 2)
FLAG_PENDING_WRITE = 0x01  # v2 feature flag: recovery in progress (§1.12)

# §1.4: path[772] | size u64 | root MHT key[16] | root MHT tag[16] | inline data[3072]
_METADATA = struct.Struct(f"<{PATH_FIELD_SIZE}sQ{KEY_SIZE}s{TAG_SIZE}s")
METADATA_PLAIN_SIZE = _METADATA.size + INLINE_DATA_SIZE  # 3884
# §1.3: file id | major | minor | nonce | tag   (v2 adds one flags byte after it)
_HEADER = struct.Struct(f"<8sBB{NONCE_SIZE}s{TAG_SIZE}s")  # 58 bytes


@dataclass(frozen=True, slots=True)
class Header:
    """The plaintext header of node 0 (not authenticated, §1.3)."""

    version: int
    minor: int
    nonce: bytes
    tag: bytes
    flags: int = 0

    @property
    def ciphertext_offset(self) -> int:
        """Where the 3884-byte encrypted metadata starts in node 0 (58, or 59 with v2's flags)."""
        return _HEADER.size + (1 if self.version >= 2 else 0)


@dataclass(frozen=True, slots=True)
class Metadata:
    """The decrypted metadata of §1.4. ``path`` is the raw bound-path bytes (no NUL)."""

    path: bytes
    size: int
    root_key: bytes
    root_tag: bytes
    inline: bytes  # always INLINE_DATA_SIZE bytes; only the first min(size, 3072) are file data


def parse_header(node0: bytes | bytearray | memoryview, source: str) -> Header:
    """Parse the plaintext header of node 0 in Gramine's order of checks (§1.9 read steps 2-3).

    Raises:
        NotProtectedFile: no ``GRAFS_PF`` magic.
        UnsupportedVersion: major version not 1 or 2, or unknown v2 feature flags.
        RecoveryPending: v2 with the pending-write flag.
    """
    if len(node0) < _HEADER.size + 1:
        raise NotProtectedFile(source, f"only {len(node0)} bytes, too short for a protected file header")
    file_id, major, minor, nonce, tag = _HEADER.unpack_from(node0, 0)
    if file_id == OLD_FILE_ID:
        raise NotProtectedFile(
            source, "has the pre-2021 Graphene magic GRAPH_PF, which no Gramine release can read"
        )
    if file_id != FILE_ID:
        raise NotProtectedFile(source, "not a Gramine protected file (no GRAFS_PF magic at offset 0)")
    if major not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(source, f"protected-file format major version {major} (supported: 1, 2)")
    flags = node0[_HEADER.size] if major >= 2 else 0
    if flags & FLAG_PENDING_WRITE:
        raise RecoveryPending(
            source,
            "format-2 file with the 'pending write' recovery flag set: a Gramine write was interrupted "
            "and the file must be recovered (from its .gramine.recovery file) by Gramine first",
        )
    if flags:
        raise UnsupportedVersion(source, f"unknown format-2 feature flags 0x{flags:02x}")
    return Header(version=major, minor=minor, nonce=bytes(nonce), tag=bytes(tag), flags=flags)


def build_node0(header: Header, ciphertext: bytes | bytearray | memoryview) -> bytes:
    """Node 0: header, (v2: flags byte), encrypted metadata, zero padding to NODE_SIZE."""
    if header.version not in SUPPORTED_VERSIONS:
        raise ValueError(f"format version must be 1 or 2, not {header.version!r}")
    if len(ciphertext) != METADATA_PLAIN_SIZE:
        raise ValueError("encrypted metadata must be 3884 bytes")
    parts = [_HEADER.pack(FILE_ID, header.version, header.minor, header.nonce, header.tag)]
    if header.version >= 2:
        parts.append(bytes([header.flags]))
    parts.append(bytes(ciphertext))
    body = b"".join(parts)
    return body + bytes(NODE_SIZE - len(body))


def parse_metadata(plain: bytes | bytearray | memoryview, source: str) -> Metadata:
    """Parse the 3884 decrypted metadata bytes (already authenticated)."""
    raw_path, size, root_key, root_tag = _METADATA.unpack_from(plain, 0)
    end = raw_path.find(b"\0")
    if end < 0:
        raise ProtectedFileError(source, "the bound path in the metadata is not NUL-terminated")
    inline = bytes(plain[_METADATA.size : _METADATA.size + INLINE_DATA_SIZE])
    return Metadata(path=raw_path[:end], size=size, root_key=root_key, root_tag=root_tag, inline=inline)


def build_metadata(meta: Metadata) -> bytes:
    """The 3884-byte metadata plaintext; ``meta.inline`` may be shorter (zero padded)."""
    if len(meta.inline) > INLINE_DATA_SIZE:
        raise ValueError("inline data is at most 3072 bytes")
    head = _METADATA.pack(meta.path, meta.size, meta.root_key, meta.root_tag)  # pads path with NULs
    return head + meta.inline + bytes(INLINE_DATA_SIZE - len(meta.inline))


def encode_path(path: str, source: str) -> bytes:
    """The bytes Gramine stores for ``path`` (file-system encoding), checked against §1.11.

    Raises:
        PathTooLong: longer than 771 bytes, empty, or containing a NUL.
    """
    raw = path.encode("utf-8", "surrogateescape")
    if not raw:
        raise PathTooLong(source, "the path to bind is empty")
    if b"\0" in raw:
        raise PathTooLong(source, "the path to bind contains a NUL byte")
    if len(raw) > MAX_PATH_BYTES:
        raise PathTooLong(
            source, f"bound path is {len(raw)} bytes; Gramine allows at most {MAX_PATH_BYTES}"
        )
    return raw
