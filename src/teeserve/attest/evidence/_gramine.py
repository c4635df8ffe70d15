"""Gramine's ``/dev/attestation`` pseudo-files (gramine-formats.md §3.7).

Strategy: one ``os.write`` of all 64 bytes to ``user_report_data`` (each write() replaces the stored
report data; a short or split write would quote zero-padded data), then read ``quote`` to EOF (opening
it generates a fresh quote over the current report data). The files are process-wide and not
thread-safe, so every write/read pair holds one process-wide lock.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from ._base import check_report_data
from ._errors import EvidenceIOError, EvidenceUnavailable, WrongAttestationType

__all__ = ["GramineProvider", "DEFAULT_ROOT", "WRAP_KEY_SIZE"]

DEFAULT_ROOT = "/dev/attestation"
#: Encrypted-files keys are AES-128-GCM keys: exactly 16 raw bytes in one write (§3.7).
WRAP_KEY_SIZE = 16
#: A quote pseudo-file never exceeds 8 KiB; refuse to read unbounded data from a wrong path.
_MAX_QUOTE = 64 * 1024

# /dev/attestation is per process: one lock for every provider instance in this process.
_LOCK = threading.Lock()


def _read_all(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise EvidenceIOError(f"{path}: more than {limit} bytes, not a quote")
            chunks.append(chunk)
    finally:
        os.close(fd)


def _write_once(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise EvidenceIOError(f"{path}: short write ({written} of {len(data)} bytes)")


class GramineProvider:
    """Quotes from inside a Gramine SGX enclave (``sgx.remote_attestation = "dcap"``).

    ``root`` is the pseudo-file directory; tests point it at a tree they lay out.
    """

    kind = "sgx"

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"GramineProvider(root={str(self.root)!r})"

    def _check_available(self) -> None:
        if not self.root.is_dir():
            raise EvidenceUnavailable(
                f"{self.root}: not found (not running inside Gramine, or sgx.remote_attestation is not set)"
            )
        type_file = self.root / "attestation_type"
        if type_file.exists():
            kind = type_file.read_bytes().strip(b"\0\n ").decode("ascii", "replace")
            if kind != "dcap":
                raise WrongAttestationType(
                    f"{type_file}: attestation type is {kind!r}, need 'dcap' (set sgx.remote_attestation)"
                )
        if not (self.root / "quote").exists():
            raise EvidenceUnavailable(
                f"{self.root / 'quote'}: not found (sgx.remote_attestation = \"none\"?)"
            )

    def get_quote(self, report_data: bytes) -> bytes:
        """Write ``report_data`` to ``user_report_data`` in one write, then read ``quote`` whole.

        Raises:
            TypeError, ValueError: ``report_data`` is not 64 bytes.
            EvidenceUnavailable: the pseudo-files are missing.
            WrongAttestationType: ``attestation_type`` is not ``dcap``.
            EvidenceIOError: the write or read failed, or the quote is empty.
        """
        data = check_report_data(report_data)
        with _LOCK:
            self._check_available()
            try:
                _write_once(self.root / "user_report_data", data)
                quote = _read_all(self.root / "quote", _MAX_QUOTE)
            except OSError as exc:
                raise EvidenceIOError(f"{self.root}: {exc.strerror or exc}") from exc
        if not quote:
            raise EvidenceIOError(f"{self.root / 'quote'}: empty quote")
        return quote

    def write_key(self, name: str, key: bytes) -> None:
        """Install an encrypted-files key: one write of exactly 16 bytes to ``keys/<name>``.

        Raises:
            TypeError: ``key`` is not bytes.
            ValueError: ``key`` is not 16 bytes, or ``name`` is not a plain file name.
            EvidenceUnavailable: ``keys/<name>`` does not exist (the manifest does not know the key).
            EvidenceIOError: the write was refused or short.
        """
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        if len(key) != WRAP_KEY_SIZE:
            raise ValueError(f"an encrypted-files key is exactly {WRAP_KEY_SIZE} bytes, got {len(key)}")
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ValueError(f"invalid key name {name!r}")
        path = self.root / "keys" / name
        if len(os.fsencode(path)) > 255:
            raise ValueError(f"key path {path} is longer than Gramine's 256-byte limit")
        with _LOCK:
            try:
                _write_once(path, key)
            except FileNotFoundError as exc:
                raise EvidenceUnavailable(
                    f"{path}: no such key (is it named in the manifest's fs.mounts key_name?)"
                ) from exc
            except OSError as exc:
                if exc.errno == errno.EACCES:
                    raise EvidenceIOError(f"{path}: write refused (EACCES)") from exc
                raise EvidenceIOError(f"{path}: {exc.strerror or exc}") from exc
