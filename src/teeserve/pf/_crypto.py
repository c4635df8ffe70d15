"""The two cryptographic operations of protected files (spec §1.7, §1.8). Pure code, no I/O.

Strategy: every node is AES-128-GCM with an all-zero 12-byte IV and no AAD; the IV is safe because
every seal draws a fresh key. The metadata key comes from the wrap key by one block of the
NIST SP 800-108 counter-mode KDF with AES-CMAC. Authentication failures surface as
``cryptography.exceptions.InvalidTag``; the caller knows which node it was and translates it.

Hot path: constructing ``AESGCM`` costs about as much as sealing a node, so callers pass
preallocated buffers and these functions add no copies of their own.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

from ._format import KEY_SIZE, NONCE_SIZE, TAG_SIZE

__all__ = ["InvalidTag", "ZERO_IV", "derive_metadata_key", "seal", "seal_into", "open_into"]

ZERO_IV = bytes(12)
_KDF_LABEL = b"SGX-PROTECTED-FS-METADATA-KEY".ljust(64, b"\0")
_KDF_COUNTER = (1).to_bytes(4, "little")
_KDF_LENGTH_BITS = (KEY_SIZE * 8).to_bytes(4, "little")

Buffer = bytes | bytearray | memoryview


def derive_metadata_key(wrap_key: bytes, nonce: Buffer) -> bytes:
    """metadata_key = AES-CMAC(wrap_key, 1 ‖ label[64] ‖ nonce[32] ‖ 128), all u32 LE (§1.7)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("the KDF nonce is 32 bytes")
    mac = CMAC(AES(wrap_key))
    mac.update(_KDF_COUNTER + _KDF_LABEL + bytes(nonce) + _KDF_LENGTH_BITS)
    return mac.finalize()


def seal(key: Buffer, plaintext: Buffer) -> tuple[bytes, bytes]:
    """(ciphertext, tag) of ``plaintext`` under ``key``."""
    out = AESGCM(bytes(key)).encrypt(ZERO_IV, plaintext, None)
    return out[:-TAG_SIZE], out[-TAG_SIZE:]


def seal_into(key: Buffer, plaintext: Buffer, out: bytearray | memoryview) -> None:
    """Write ciphertext ‖ tag into ``out`` (exactly ``len(plaintext) + 16`` bytes)."""
    AESGCM(key).encrypt_into(ZERO_IV, plaintext, None, out)


def open_into(key: Buffer, ciphertext_and_tag: Buffer, out: bytearray | memoryview) -> None:
    """Authenticate and decrypt ``ciphertext ‖ tag`` into ``out``; raises ``InvalidTag``.

    OpenSSL writes the plaintext before it checks the tag, so on failure ``out`` is wiped before the
    exception propagates: unauthenticated plaintext never stays in a caller's buffer.
    """
    try:
        AESGCM(key).decrypt_into(ZERO_IV, ciphertext_and_tag, None, out)
    except InvalidTag:
        out[:] = bytes(len(out))
        raise
