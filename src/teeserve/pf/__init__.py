"""Gramine protected files (the encrypted-model format) and wrap keys.

Files written here are byte-compatible with ``gramine-sgx-pf-crypt`` both ways: format major
version 1 by default (readable by every Gramine release), 2 on request; both are read. Layout:
``_format`` (node structs), ``_tree`` (index arithmetic) and ``_crypto`` (KDF, one-node AES-GCM)
are pure code; ``_file`` is the I/O shell (verifying reader, streaming writer); ``_api`` holds the
recipes below; ``_keys`` the wrap keys; ``_paths`` Gramine's path normalizer. The spec is
``shared/specs/gramine-formats.md`` §1.

    from teeserve import pf
    key = pf.load_wrap_key("wrap_key")
    bound = pf.encrypt_file("model.onnx", "enc/model.onnx", key)      # binds "enc/model.onnx"
    with pf.open_reader("enc/model.onnx", key, expected_path=bound) as r:
        model_bytes = r.read_all()
"""

from __future__ import annotations

from ._api import (
    decrypt_bytes,
    decrypt_file,
    decrypt_tree,
    encrypt_bytes,
    encrypt_file,
    encrypt_tree,
    is_protected_file,
    open_reader,
)
from ._errors import (
    NotProtectedFile,
    PathMismatch,
    PathTooLong,
    ProtectedFileError,
    RecoveryPending,
    SourceChanged,
    TamperedNode,
    TruncatedFile,
    UnsupportedVersion,
    WrapKeyError,
    WrongKeyOrCorruptMetadata,
)
from ._file import Reader
from ._format import MAX_PATH_BYTES, NODE_SIZE
from ._keys import WRAP_KEY_SIZE, load_wrap_key, new_wrap_key, parse_wrap_key, write_wrap_key
from ._paths import normalize_path

__all__ = [
    "MAX_PATH_BYTES",
    "NODE_SIZE",
    "NotProtectedFile",
    "PathMismatch",
    "PathTooLong",
    "ProtectedFileError",
    "Reader",
    "RecoveryPending",
    "SourceChanged",
    "TamperedNode",
    "TruncatedFile",
    "UnsupportedVersion",
    "WRAP_KEY_SIZE",
    "WrapKeyError",
    "WrongKeyOrCorruptMetadata",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_tree",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_tree",
    "is_protected_file",
    "load_wrap_key",
    "new_wrap_key",
    "normalize_path",
    "open_reader",
    "parse_wrap_key",
    "write_wrap_key",
]
