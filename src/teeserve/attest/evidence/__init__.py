"""Evidence providers: get a quote over 64 bytes of report data from the TEE we run in.

``get_provider("gramine" | "tdx" | "sim", **options)`` picks one (the CLI's ``--tee``):

- ``gramine``: Gramine's ``/dev/attestation`` pseudo-files (SGX DCAP quotes);
- ``tdx``: the Linux configfs-tsm report interface (TDX, and SEV-SNP with ``provider="sev_guest"``);
- ``sim``: the simulated TEE (``teeserve.attest.sim``), loudly marked SIMULATED.
"""

from __future__ import annotations

from ._base import PROVIDER_NAMES, REPORT_DATA_SIZE, EvidenceProvider, get_provider
from ._errors import (
    ConcurrentReportError,
    EvidenceError,
    EvidenceIOError,
    EvidenceUnavailable,
    WrongAttestationType,
)
from ._gramine import WRAP_KEY_SIZE, GramineProvider
from ._sim import SimProvider
from ._tsm import TsmReport, TsmReportProvider

__all__ = [
    "PROVIDER_NAMES",
    "REPORT_DATA_SIZE",
    "WRAP_KEY_SIZE",
    "ConcurrentReportError",
    "EvidenceError",
    "EvidenceIOError",
    "EvidenceProvider",
    "EvidenceUnavailable",
    "GramineProvider",
    "SimProvider",
    "TsmReport",
    "TsmReportProvider",
    "WrongAttestationType",
    "get_provider",
]
