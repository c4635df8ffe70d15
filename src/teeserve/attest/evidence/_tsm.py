"""The Linux configfs-tsm report interface (``/sys/kernel/config/tsm/report``), for TDX and SEV-SNP.

Strategy (Documentation/ABI/testing/configfs-tsm in the kernel): ``mkdir`` a fresh report entry (the
kernel creates its attribute files), write the 64-byte ``inblob``, read ``generation``, read
``outblob`` (the quote is produced on that read), read ``generation`` again. ``generation`` increments
on every write to the entry, so a change between the two reads means another writer raced us and the
outblob may not be over our inblob: retry with a fresh entry. The entry is removed with ``rmdir``.
``provider`` names the TEE driver (``tdx_guest``, ``sev_guest``) and is checked before use.

``mkdir``/``rmdir`` are injectable because a test tree on an ordinary file system cannot create
attribute files on mkdir the way configfs does; everything else runs the real code path.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ._base import check_report_data
from ._errors import ConcurrentReportError, EvidenceIOError, EvidenceUnavailable, WrongAttestationType

__all__ = ["TsmReportProvider", "TsmReport", "DEFAULT_TSM_ROOT", "PROVIDER_KINDS"]

DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"
#: configfs-tsm provider name → our TEE kind.
PROVIDER_KINDS = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}
_MAX_BLOB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TsmReport:
    """One configfs-tsm report: the quote (``outblob``), the driver that made it and its generation."""

    outblob: bytes = field(repr=False)
    provider: str
    generation: int
    auxblob: bytes | None = field(default=None, repr=False)


def _read(path: Path, limit: int = _MAX_BLOB) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                raise EvidenceIOError(f"{path}: more than {limit} bytes")
    finally:
        os.close(fd)


def _read_int(path: Path) -> int:
    text = _read(path, 64).strip()
    try:
        return int(text)
    except ValueError as exc:
        raise EvidenceIOError(f"{path}: not a number: {text[:20]!r}") from exc


class TsmReportProvider:
    """Quotes through configfs-tsm. ``provider`` is the driver we insist on (``tdx_guest`` by default,
    ``sev_guest`` for SEV-SNP); ``kind`` follows it."""

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_TSM_ROOT,
        *,
        provider: str = "tdx_guest",
        retries: int = 3,
        mkdir: Callable[[Path], None] = os.mkdir,
        rmdir: Callable[[Path], None] = os.rmdir,
    ) -> None:
        if provider not in PROVIDER_KINDS:
            raise ValueError(f"unknown configfs-tsm provider {provider!r} (one of {sorted(PROVIDER_KINDS)})")
        if retries < 1:
            raise ValueError("retries must be at least 1")
        self.root = Path(root)
        self.provider = provider
        self.kind = PROVIDER_KINDS[provider]
        self.retries = retries
        self._mkdir = mkdir
        self._rmdir = rmdir
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TsmReportProvider(root={str(self.root)!r}, provider={self.provider!r})"

    def get_quote(self, report_data: bytes) -> bytes:
        """Return the ``outblob`` over ``report_data`` (see :meth:`get_report`)."""
        return self.get_report(report_data).outblob

    def get_report(self, report_data: bytes) -> TsmReport:
        """Run one configfs-tsm report over ``report_data`` (64 bytes), retrying on a concurrent writer.

        Raises:
            TypeError, ValueError: ``report_data`` is not 64 bytes.
            EvidenceUnavailable: no configfs-tsm report directory.
            WrongAttestationType: the entry's ``provider`` is not the one asked for.
            EvidenceIOError: a pseudo-file operation failed or the outblob is empty.
            ConcurrentReportError: the generation changed during every attempt.
        """
        data = check_report_data(report_data)
        if not self.root.is_dir():
            raise EvidenceUnavailable(
                f"{self.root}: not found (no configfs-tsm: kernel without CONFIG_TSM_REPORTS, "
                "configfs not mounted, or not a TDX/SEV-SNP guest)"
            )
        with self._lock:
            for _ in range(self.retries):
                report = self._attempt(data)
                if report is not None:
                    return report
        raise ConcurrentReportError(
            f"{self.root}: report generation changed during {self.retries} attempts (a concurrent writer?)"
        )

    def _attempt(self, data: bytes) -> TsmReport | None:
        entry = self.root / f"teeserve-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            self._mkdir(entry)
        except OSError as exc:
            raise EvidenceIOError(f"{entry}: cannot create report entry: {exc.strerror or exc}") from exc
        try:
            provider = _read(entry / "provider", 256).strip().decode("ascii", "replace")
            if provider != self.provider:
                raise WrongAttestationType(
                    f"{entry / 'provider'}: provider is {provider!r}, expected {self.provider!r}"
                )
            fd = os.open(entry / "inblob", os.O_WRONLY)
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
            if written != len(data):
                raise EvidenceIOError(f"{entry / 'inblob'}: short write ({written} of {len(data)} bytes)")
            before = _read_int(entry / "generation")
            outblob = _read(entry / "outblob")
            after = _read_int(entry / "generation")
            if before != after:
                return None
            if not outblob:
                raise EvidenceIOError(f"{entry / 'outblob'}: empty report")
            aux_path = entry / "auxblob"
            auxblob = _read(aux_path) if aux_path.exists() else None
            return TsmReport(outblob=outblob, provider=provider, generation=after, auxblob=auxblob or None)
        except OSError as exc:
            raise EvidenceIOError(f"{entry}: {exc.strerror or exc}") from exc
        finally:
            try:
                self._rmdir(entry)
            except OSError:
                pass  # a leftover entry is harmless; the kernel frees it on rmdir later
