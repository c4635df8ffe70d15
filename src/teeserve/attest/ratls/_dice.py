"""The TCG DICE tagged-evidence extension value (gramine-formats.md §3.3), pure CBOR in and out.

Strategy: encoding uses ``cbor2`` (minimal heads, as Gramine's QCBOR emits). Decoding walks the
three outer heads itself (tag, array, two byte strings) because the spec requires *definite*
lengths there and a generic decoder hides whether a byte string was chunked; the claims map is
decoded with ``cbor2`` after the same definiteness check on its head.

    evidence   = #6.60000([ bstr(quote), bstr(claims) ])
    claims     = { "pubkey-hash": bstr(hash_entry), * tstr => any }
    hash_entry = [ alg (1 = sha-256, 7 = sha-384, 8 = sha-512), bstr(digest) ]
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import cbor2

from ._errors import MalformedEvidence, MissingPubkeyHash

__all__ = [
    "DICE_TAG",
    "PUBKEY_HASH",
    "HASH_ALGORITHMS",
    "encode_claims",
    "encode_evidence",
    "decode_evidence",
    "decode_claims",
    "pubkey_hash_of",
]

#: CBOR tag of TCG DICE tagged evidence ("tagged-sgx-evidence" in Gramine).
DICE_TAG = 60000
PUBKEY_HASH = "pubkey-hash"
#: IANA "Named Information Hash Algorithm" ids → hashlib names.
HASH_ALGORITHMS: dict[int, str] = {1: "sha256", 7: "sha384", 8: "sha512"}

_BSTR, _ARRAY, _MAP, _TAG = 2, 4, 5, 6


def encode_claims(spki_der: bytes) -> bytes:
    """``{"pubkey-hash": bstr([1, SHA-256(spki)])}`` exactly as Gramine serializes it (51 bytes)."""
    hash_entry = cbor2.dumps([1, hashlib.sha256(spki_der).digest()])
    return cbor2.dumps({PUBKEY_HASH: hash_entry})


def encode_evidence(quote: bytes, claims: bytes) -> bytes:
    """``#6.60000([bstr(quote), bstr(claims)])``."""
    return cbor2.dumps(cbor2.CBORTag(DICE_TAG, [bytes(quote), bytes(claims)]))


def _head(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """Read one CBOR head at ``pos`` → (major type, argument, position after the head)."""
    if pos >= len(buf):
        raise MalformedEvidence(f"{what}: truncated CBOR at byte {pos}")
    initial = buf[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info == 31:
        raise MalformedEvidence(f"{what}: indefinite-length item at byte {pos} (definite length required)")
    if info > 27:
        raise MalformedEvidence(f"{what}: reserved CBOR head 0x{initial:02x} at byte {pos}")
    size = 1 << (info - 24)
    if pos + 1 + size > len(buf):
        raise MalformedEvidence(f"{what}: truncated CBOR head at byte {pos}")
    return major, int.from_bytes(buf[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def _bstr(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    major, length, pos = _head(buf, pos, what)
    if major != _BSTR:
        raise MalformedEvidence(f"{what}: expected a byte string, found CBOR major type {major}")
    if pos + length > len(buf):
        raise MalformedEvidence(f"{what}: byte string of {length} bytes runs past the end")
    return buf[pos : pos + length], pos + length


def decode_evidence(value: bytes) -> tuple[bytes, bytes]:
    """Split the extension value into (quote, claims bytes).

    Raises:
        MalformedEvidence: wrong tag, not an array of exactly two definite byte strings, trailing
            bytes, or empty claims.
    """
    what = "TCG DICE evidence"
    major, tag, pos = _head(value, 0, what)
    if major != _TAG:
        raise MalformedEvidence(f"{what}: does not start with a CBOR tag (major type {major})")
    if tag != DICE_TAG:
        raise MalformedEvidence(f"{what}: CBOR tag {tag}, expected {DICE_TAG}")
    major, count, pos = _head(value, pos, what)
    if major != _ARRAY or count != 2:
        raise MalformedEvidence(f"{what}: expected an array of 2 items (major {major}, count {count})")
    quote, pos = _bstr(value, pos, what + " quote")
    claims, pos = _bstr(value, pos, what + " claims")
    if pos != len(value):
        raise MalformedEvidence(f"{what}: {len(value) - pos} trailing bytes after the array")
    if not claims:
        raise MalformedEvidence(f"{what}: empty claims")
    return quote, claims


def _loads_exact(data: bytes, what: str) -> Any:
    fp = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(fp).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedEvidence(f"{what}: invalid CBOR: {exc}") from exc
    if fp.tell() != len(data):
        raise MalformedEvidence(f"{what}: {len(data) - fp.tell()} trailing bytes")
    return obj


def decode_claims(claims: bytes) -> dict[str, Any]:
    """Decode the claims map: definite, non-empty, non-empty text keys.

    Raises:
        MalformedEvidence: any of those rules broken.
    """
    what = "TCG DICE claims"
    major, count, _ = _head(claims, 0, what)
    if major != _MAP:
        raise MalformedEvidence(f"{what}: not a CBOR map (major type {major})")
    if count == 0:
        raise MalformedEvidence(f"{what}: empty map")
    obj = _loads_exact(claims, what)
    if not isinstance(obj, dict):
        raise MalformedEvidence(f"{what}: not a map")
    for key in obj:
        if not isinstance(key, str) or not key:
            raise MalformedEvidence(f"{what}: claim key {key!r} is not a non-empty text string")
    return obj


def pubkey_hash_of(claims: dict[str, Any]) -> tuple[str, bytes]:
    """Return (hashlib name, digest) of the ``pubkey-hash`` claim.

    Raises:
        MissingPubkeyHash: no ``pubkey-hash`` claim.
        MalformedEvidence: the claim is not ``bstr([alg, bstr digest])`` with alg 1, 7 or 8 and a digest
            of that algorithm's size.
    """
    what = "TCG DICE claim 'pubkey-hash'"
    if PUBKEY_HASH not in claims:
        raise MissingPubkeyHash("TCG DICE claims: no 'pubkey-hash' claim (required to bind the key)")
    raw = claims[PUBKEY_HASH]
    if not isinstance(raw, bytes):
        raise MalformedEvidence(f"{what}: value is not a byte string")
    major, count, _ = _head(raw, 0, what)
    if major != _ARRAY or count != 2:
        raise MalformedEvidence(f"{what}: expected a 2-element array")
    entry = _loads_exact(raw, what)
    alg, digest = entry
    if type(alg) is not int or alg not in HASH_ALGORITHMS:
        raise MalformedEvidence(f"{what}: hash algorithm {alg!r} is not 1, 7 or 8 (SHA-256/384/512)")
    name = HASH_ALGORITHMS[alg]
    if not isinstance(digest, bytes) or len(digest) != hashlib.new(name).digest_size:
        raise MalformedEvidence(f"{what}: digest is not a {name} value")
    return name, digest
