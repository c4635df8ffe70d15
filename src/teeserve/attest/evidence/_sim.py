"""The simulated TEE as an evidence provider (laptops and CI).

Strategy: a thin wrapper over ``teeserve.attest.sim.make_quote``. Simulated quotes are never evidence
of anything; the provider says so loudly, once per process, and verifiers accept them only when a
policy explicitly enables simulation.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ._base import check_report_data

__all__ = ["SimProvider"]

log = logging.getLogger("teeserve.attest.evidence")
_warned = False
_warn_lock = threading.Lock()


def _warn_once() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    log.warning(
        "SIMULATED TEE: quotes are signed with a local simulation key and prove nothing about the "
        "host; a verifier accepts them only when simulation is explicitly allowed"
    )


class SimProvider:
    """Simulated SGX-layout quotes signed with the key at ``key_path`` (``teeserve sim init``).

    ``mr_enclave`` defaults to ``sim.code_measurement(config)``: a measurement over the installed
    teeserve code and the server configuration, so a code or configuration change changes it.
    """

    kind = "sim"

    def __init__(
        self,
        key_path: str | os.PathLike[str],
        *,
        mr_enclave: bytes | None = None,
        config: bytes = b"",
        isv_prod_id: int = 0,
        isv_svn: int = 0,
        debug: bool = False,
    ) -> None:
        from .. import sim

        self._sim: Any = sim
        self.key_path = os.fspath(key_path)
        self._key = sim.load_signing_key(self.key_path)
        if mr_enclave is None:
            mr_enclave = sim.code_measurement(config)
        if len(mr_enclave) != 32:
            raise ValueError(f"mr_enclave must be 32 bytes, got {len(mr_enclave)}")
        self.mr_enclave = bytes(mr_enclave)
        self.isv_prod_id = isv_prod_id
        self.isv_svn = isv_svn
        self.debug = debug

    def __repr__(self) -> str:
        return f"SimProvider(key_path={self.key_path!r}, mr_enclave={self.mr_enclave.hex()})"

    def get_quote(self, report_data: bytes) -> bytes:
        """Return a SIMULATED quote over ``report_data`` (64 bytes)."""
        data = check_report_data(report_data)
        _warn_once()
        quote: bytes = self._sim.make_quote(
            self._key,
            data,
            mr_enclave=self.mr_enclave,
            isv_prod_id=self.isv_prod_id,
            isv_svn=self.isv_svn,
            debug=self.debug,
        )
        return quote
