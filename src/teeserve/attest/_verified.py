"""The result of verifying evidence: what the policy engine looks at."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._quote import Quote, SgxReportBody, TdReport

__all__ = ["TeeKind", "VerifiedQuote"]


class TeeKind(str, enum.Enum):
    """The kind of TEE a verified quote came from. ``SIM`` is teeserve's simulated TEE (no hardware)."""

    SGX = "sgx"
    TDX = "tdx"
    SIM = "sim"

    def __str__(self) -> str:
        return "sim (SIMULATED)" if self is TeeKind.SIM else self.value


@dataclass(frozen=True, slots=True)
class VerifiedQuote:
    """A quote whose signature chain and collateral checked out (or a trusted SIMULATED quote).

    ``tcb_status`` and ``advisory_ids`` are the verifier's verdict on the platform; whether they are
    good enough is the policy's decision. ``collateral_expiry`` is the earliest ``nextUpdate`` of the
    collateral used (Unix seconds), ``None`` for simulated quotes. ``sim_key_id`` is SHA-256 of the
    simulation public key's raw X||Y (equal to the quote's MRSIGNER) for simulated quotes.
    """

    tee: TeeKind
    simulated: bool
    tcb_status: str
    advisory_ids: tuple[str, ...]
    quote: Quote
    collateral_expiry: int | None
    verified_at: int
    sim_key_id: bytes | None = None

    @property
    def report_data(self) -> bytes:
        return self.quote.report_data

    @property
    def sgx(self) -> SgxReportBody | None:
        body = self.quote.body
        return body if isinstance(body, SgxReportBody) else None

    @property
    def td(self) -> TdReport | None:
        body = self.quote.body
        return body if isinstance(body, TdReport) else None

    @property
    def fmspc(self) -> str | None:
        return self.quote.fmspc

    def summary(self) -> str:
        """One line for logs: TEE, measurement, TCB status (and SIMULATED where it applies)."""
        if self.simulated:
            body = self.quote.body
            assert isinstance(body, SgxReportBody)
            return (
                f"SIMULATED quote (no hardware TEE): mr_enclave={body.mr_enclave.hex()} "
                f"mr_signer={body.mr_signer.hex()} tcb_status={self.tcb_status} (SIMULATED)"
            )
        if self.td is not None:
            ident = f"mr_td={self.td.mr_td.hex()}"
        else:
            assert self.sgx is not None
            ident = f"mr_enclave={self.sgx.mr_enclave.hex()} mr_signer={self.sgx.mr_signer.hex()}"
        adv = ",".join(self.advisory_ids) or "-"
        head = f"{self.tee.value} quote v{self.quote.version}"
        return f"{head}: {ident} tcb_status={self.tcb_status} advisories={adv}"

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"VerifiedQuote({self.summary()})"
