"""What goes inside message 3: key encodings for each Gramine release (gramine-formats.md §2.4).

- ``"raw"``: Gramine ≥ 1.3 — exactly the 16 raw key bytes (written as is to
  ``/dev/attestation/keys/<name>``);
- ``"hex"``: Gramine ≤ 1.2 — 32 lowercase hex characters + NUL (33 bytes), parsed by the enclave.
"""

from __future__ import annotations

import binascii

from ._errors import SecretFormatError

__all__ = ["SECRET_FORMATS", "KEY_SIZE", "encode_secret", "decode_secret"]

SECRET_FORMATS: tuple[str, ...] = ("raw", "hex")
KEY_SIZE = 16


def encode_secret(key: bytes, fmt: str = "raw") -> bytes:
    """Encode a 16-byte wrap key as the secret a Gramine enclave of that generation expects.

    Raises:
        TypeError: ``key`` is not bytes.
        ValueError: ``key`` is not 16 bytes, or unknown ``fmt``.
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"a wrap key is exactly {KEY_SIZE} bytes, got {len(key)}")
    if fmt == "raw":
        return key
    if fmt == "hex":
        return key.hex().encode("ascii") + b"\0"
    raise ValueError(f"unknown secret format {fmt!r} (one of {', '.join(SECRET_FORMATS)})")


def decode_secret(secret: bytes, fmt: str = "raw") -> bytes:
    """The 16-byte key inside a received secret, checked the way the Gramine client checks it.

    Raises:
        SecretFormatError: wrong size or not hex (the message never shows the secret).
        ValueError: unknown ``fmt``.
    """
    if fmt == "raw":
        if len(secret) != KEY_SIZE:
            raise SecretFormatError(f"expected a {KEY_SIZE}-byte raw key, got a {len(secret)}-byte secret")
        return bytes(secret)
    if fmt == "hex":
        if len(secret) != 2 * KEY_SIZE + 1 or not secret.endswith(b"\0"):
            raise SecretFormatError(
                f"expected {2 * KEY_SIZE} hex characters + NUL, got a {len(secret)}-byte secret"
            )
        try:
            return binascii.unhexlify(secret[:-1])
        except (binascii.Error, ValueError) as exc:
            raise SecretFormatError("secret is not 32 hex characters") from exc
    raise ValueError(f"unknown secret format {fmt!r} (one of {', '.join(SECRET_FORMATS)})")
