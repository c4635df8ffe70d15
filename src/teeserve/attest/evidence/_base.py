"""The evidence-provider interface and the registry behind ``get_provider``.

Strategy: a provider turns 64 bytes of report data into a quote, nothing more. What the report data
commits to (an RA-TLS key, a nonce) is decided by the caller; how the quote is verified is decided by
the verifier. Providers are cheap objects; all TEE state lives behind the pseudo-files they talk to.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..._errors import UsageError

__all__ = ["REPORT_DATA_SIZE", "EvidenceProvider", "check_report_data", "get_provider", "PROVIDER_NAMES"]

#: SGX REPORTDATA / TDX REPORTDATA / configfs-tsm inblob size (gramine-formats.md §3.7).
REPORT_DATA_SIZE = 64


@runtime_checkable
class EvidenceProvider(Protocol):
    """Something that can produce a quote over 64 bytes of report data.

    ``kind`` is the TEE the quote comes from: ``"sgx"``, ``"tdx"`` (or ``"sev-snp"`` for a
    configfs-tsm host whose provider is ``sev_guest``) or ``"sim"``.
    """

    kind: str

    def get_quote(self, report_data: bytes) -> bytes:
        """Return a fresh quote whose report data is ``report_data`` (exactly 64 bytes).

        Raises:
            TypeError: ``report_data`` is not bytes.
            ValueError: ``report_data`` is not 64 bytes long.
            EvidenceError: the TEE could not produce the quote.
        """
        ...


def check_report_data(report_data: object) -> bytes:
    if not isinstance(report_data, (bytes, bytearray, memoryview)):
        raise TypeError(f"report_data must be bytes, not {type(report_data).__name__}")
    data = bytes(report_data)
    if len(data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be exactly {REPORT_DATA_SIZE} bytes, got {len(data)}")
    return data


PROVIDER_NAMES: tuple[str, ...] = ("gramine", "tdx", "sim")


def get_provider(name: str, **options: Any) -> EvidenceProvider:
    """Build the provider selected by ``--tee NAME``: ``gramine``, ``tdx`` or ``sim``.

    ``options`` go to the provider's constructor (e.g. ``root=`` for a pseudo-file tree,
    ``key_path=`` for the simulated TEE).

    Raises:
        UsageError: unknown provider name or option.
    """
    from ._gramine import GramineProvider
    from ._sim import SimProvider
    from ._tsm import TsmReportProvider

    classes: dict[str, Any] = {"gramine": GramineProvider, "tdx": TsmReportProvider, "sim": SimProvider}
    cls = classes.get(name)
    if cls is None:
        raise UsageError(f"unknown TEE {name!r} (choose one of: {', '.join(PROVIDER_NAMES)})")
    try:
        provider: EvidenceProvider = cls(**options)
    except TypeError as exc:
        raise UsageError(f"TEE {name!r}: {exc}") from exc
    return provider
