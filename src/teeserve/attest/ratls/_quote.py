"""Find the 64-byte report data inside a quote (dcap-attestation.md §4), without verifying anything.

Strategy: RA-TLS only needs the report data to check the key binding; full parsing and verification
belong to ``teeserve.attest``. Offsets: SGX v3 (and v4/v5 with an SGX body) @368; TDX v4 @568;
TDX v5 @574 (body types 2 and 3, and 4 = TD15Ex as dcap-qvl accepts).
"""

from __future__ import annotations

import struct

from ._errors import MalformedEvidence

__all__ = ["report_data_of", "MIN_QUOTE_SIZE"]

#: Header + SGX report body + signature length: the shortest quote worth looking at (§3.3 rule).
MIN_QUOTE_SIZE = 436
_HEADER = 48
_TEE_TDX = 0x81


def report_data_of(quote: bytes, *, what: str = "quote") -> bytes:
    """Return ``quote``'s 64-byte report data.

    Raises:
        MalformedEvidence: too short, or an unknown version/body type.
    """
    if len(quote) < MIN_QUOTE_SIZE:
        raise MalformedEvidence(f"{what}: {len(quote)} bytes, shorter than the minimum {MIN_QUOTE_SIZE}")
    version, _key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if version == 3:
        offset = _HEADER + 320
    elif version == 4:
        offset = _HEADER + (520 if tee_type == _TEE_TDX else 320)
    elif version == 5:
        (body_type,) = struct.unpack_from("<H", quote, _HEADER)
        if body_type == 1:
            offset = _HEADER + 6 + 320
        elif body_type in (2, 3, 4):
            offset = _HEADER + 6 + 520
        else:
            raise MalformedEvidence(f"{what}: unknown v5 body type {body_type}")
    else:
        raise MalformedEvidence(f"{what}: unsupported quote version {version}")
    if len(quote) < offset + 64:
        raise MalformedEvidence(f"{what}: truncated before the report data (offset {offset})")
    return quote[offset : offset + 64]
