"""Collateral from a PCCS (or Intel PCS), behind an on-disk cache that fails closed.

Strategy: :class:`PccsClient` is a thin HTTPS shell (stdlib ``urllib`` with a verifying
``ssl.SSLContext``; an extra CA file may be trusted) that makes the PCS/PCCS API v4 requests of
dcap-attestation.md §7.1–7.2 and assembles a ``QuoteCollateralV3`` document. The signed ``tcbInfo``
and ``enclaveIdentity`` members are sliced out of the response text by offset (never re-serialised),
and the issuer chains are URL-decoded from the response headers.

:class:`CachingCollateralSource` keys collateral by (TEE, FMSPC, CA) and keeps it on disk with its
fetch time. With ``now`` injected it: serves the cached set while it is fresh; refreshes it once it
is older than ``refresh_interval`` or within ``refresh_margin`` of its earliest ``nextUpdate``; when
the refresh fails, keeps serving the cached set until it expires; then fails closed with
:class:`CollateralExpired` (or :class:`CollateralUnavailable` when nothing was ever fetched).
A failed fetch is not retried for ``retry_after`` seconds, so a PCCS outage does not add a network
timeout to every attestation.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol

from .._errors import UsageError
from .._io import PUBLIC_MODE, write_file_atomic
from ._collateral import Collateral
from ._errors import CollateralError, CollateralExpired, CollateralInvalid, CollateralUnavailable
from ._quote import Quote

__all__ = ["CollateralFetcher", "PccsClient", "CachingCollateralSource", "raw_json_member"]

log = logging.getLogger("teeserve.attest.collateral")

_FMSPC = re.compile(r"\A[0-9A-Fa-f]{12}\Z")
_INTEL_ROOT_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"


class CollateralFetcher(Protocol):
    """Fetches a fresh collateral set for (tee, fmspc, ca) from somewhere (a PCCS)."""

    def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral: ...


#: Largest PCCS response read (collateral documents and CRLs are kilobytes; a hostile or broken
#: server must not fill the broker's memory).
MAX_RESPONSE_BYTES = 4 << 20

def raw_json_member(body: str, key: str) -> str:
    """The exact text of top-level member ``key`` of the JSON object ``body`` (for signed members).

    Raises:
        ValueError: ``body`` is not a JSON object or has no such member.
    """
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(body, 0).end()  # type: ignore[union-attr]
    if body[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i += 1
    while True:
        i = ws.match(body, i).end()  # type: ignore[union-attr]
        if body[i : i + 1] == "}":
            break
        name, i = dec.raw_decode(body, i)
        i = ws.match(body, i).end()  # type: ignore[union-attr]
        if body[i : i + 1] != ":":
            raise ValueError("expected ':'")
        i = ws.match(body, i + 1).end()  # type: ignore[union-attr]
        _, end = dec.raw_decode(body, i)
        if name == key:
            return body[i:end]
        i = ws.match(body, end).end()  # type: ignore[union-attr]
        if body[i : i + 1] == ",":
            i += 1
        elif body[i : i + 1] != "}":
            raise ValueError("expected ',' or '}'")
    raise ValueError(f"no member {key!r}")


def _crl_hex(body: bytes, what: str) -> str:
    """A CRL body as PCS/PCCS serve it (DER, PEM or hex text) → hex of the DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    stripped = body.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER).hex()
        if stripped and re.fullmatch(rb"[0-9a-fA-F]+", stripped):
            der = bytes.fromhex(stripped.decode())
        else:
            der = body
        x509.load_der_x509_crl(der)
        return der.hex()
    except ValueError as exc:
        raise CollateralInvalid(f"PCCS {what}: not a CRL") from exc


class PccsClient:
    """Fetch collateral over HTTPS from a PCCS (``https://host:8081``) or Intel PCS; TLS always verified.

    ``ca_file`` pins the PEM CA(s) the PCCS certificate must chain to (a PCCS with a private
    certificate; the system store is then not consulted); without it the system store is used.
    """

    def __init__(
        self, base_url: str, *, ca_file: str | os.PathLike[str] | None = None, timeout: float = 10.0
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise UsageError(f"PCCS URL must be https://host[:port]: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        try:
            self._ssl = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"{os.fspath(ca_file or '')}: cannot load the PCCS CA file: {exc}") from exc
        self._is_intel_pcs = parsed.hostname == "api.trustedservices.intel.com"

    def _get(self, path: str, what: str) -> tuple[bytes, dict[str, str]]:
        return self._get_url(self.base_url + path, what)

    def _get_url(self, url: str, what: str) -> tuple[bytes, dict[str, str]]:
        """GET ``url`` (absolute): the body, at most ``MAX_RESPONSE_BYTES``, and the headers."""
        try:
            req = urllib.request.Request(url, headers={"Accept": "*/*", "User-Agent": "teeserve"})
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                body = resp.read(MAX_RESPONSE_BYTES + 1)
                if len(body) > MAX_RESPONSE_BYTES:
                    raise CollateralInvalid(f"PCCS {what}: response from {url} is over "
                                            f"{MAX_RESPONSE_BYTES} bytes")
                return body, {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            raise CollateralUnavailable(f"PCCS {what}: HTTP {exc.code} from {url}") from exc
        except urllib.error.URLError as exc:
            raise CollateralUnavailable(f"PCCS {what}: cannot reach {url}: {exc.reason}") from exc
        except (OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:
            raise CollateralUnavailable(f"PCCS {what}: {url}: {exc}") from exc

    @staticmethod
    def _chain(headers: dict[str, str], names: tuple[str, ...], what: str) -> str:
        for name in names:
            if name.lower() in headers:
                pem = urllib.parse.unquote(headers[name.lower()])
                if "-----BEGIN CERTIFICATE-----" not in pem:
                    raise CollateralInvalid(f"PCCS {what}: header {name} is not a PEM chain")
                return pem
        raise CollateralInvalid(f"PCCS {what}: response lacks the issuer-chain header {names[0]}")

    def _signed(self, path: str, member: str, what: str) -> tuple[str, str, dict[str, str]]:
        body, headers = self._get(path, what)
        try:
            text = body.decode("utf-8")
            signature = json.loads(text)["signature"]
            raw = raw_json_member(text, member)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise CollateralInvalid(
                f"PCCS {what}: response is not {{{member!r}: ..., 'signature': ...}}"
            ) from exc
        if not isinstance(signature, str):
            raise CollateralInvalid(f"PCCS {what}: signature is not a hex string")
        return raw, signature, headers

    def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral:
        """Fetch the collateral for ``tee`` ("sgx"/"tdx"), ``fmspc`` and PCK ``ca`` ("platform"/"processor").

        Raises:
            CollateralUnavailable: network or HTTP failure.
            CollateralInvalid: a response is malformed.
        """
        if tee not in ("sgx", "tdx") or ca not in ("platform", "processor") or not _FMSPC.match(fmspc):
            raise CollateralUnavailable(f"cannot fetch collateral for tee={tee} fmspc={fmspc} ca={ca}")
        v4 = f"/{tee}/certification/v4"
        crl_body, crl_headers = self._get(f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der", "PCK CRL")
        pck_crl = _crl_hex(crl_body, "PCK CRL")
        pck_crl_chain = self._chain(crl_headers, ("SGX-PCK-CRL-Issuer-Chain",), "PCK CRL")
        tcb_info, tcb_sig, tcb_headers = self._signed(
            f"{v4}/tcb?fmspc={fmspc.upper()}&update=standard", "tcbInfo", "TCB info"
        )
        tcb_names = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
        tcb_chain = self._chain(tcb_headers, tcb_names, "TCB info")
        qe_identity, qe_sig, qe_headers = self._signed(
            f"{v4}/qe/identity?update=standard", "enclaveIdentity", "QE identity"
        )
        qe_chain = self._chain(qe_headers, ("SGX-Enclave-Identity-Issuer-Chain",), "QE identity")
        if self._is_intel_pcs:
            # Intel PCS has no rootcacrl endpoint; the root CRL is at the root's distribution point.
            root_body, _ = self._get_absolute(_INTEL_ROOT_CRL_URL)
        else:
            root_body, _ = self._get("/sgx/certification/v4/rootcacrl", "root CA CRL")
        root_crl = _crl_hex(root_body, "root CA CRL")
        doc = {
            "pck_crl_issuer_chain": pck_crl_chain,
            "root_ca_crl": root_crl,
            "pck_crl": pck_crl,
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": tcb_sig,
            "qe_identity_issuer_chain": qe_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": qe_sig,
        }
        return Collateral.from_json(json.dumps(doc), source=f"{self.base_url} ({tee} {fmspc} {ca})")

    def _get_absolute(self, url: str) -> tuple[bytes, dict[str, str]]:
        # (no shared state touched: fetches for other platforms may run at the same time)
        return self._get_url(url, "root CA CRL")


@dataclass
class _Entry:
    collateral: Collateral
    fetched_at: int


class CachingCollateralSource:
    """A :class:`~teeserve.attest.CollateralSource` over a fetcher, cached in memory and in ``cache_dir``.

    Args:
        fetcher: where fresh collateral comes from (a :class:`PccsClient`).
        cache_dir: directory of ``<tee>-<FMSPC>-<ca>.json`` cache files (``None``: memory only).
        refresh_interval: refetch when the cached set is older than this (default one day).
        refresh_margin: refetch when the cached set expires within this (default 7 days).
        retry_after: after a failed fetch, do not try again for this long (default 60 s).
    """

    def __init__(
        self,
        fetcher: CollateralFetcher,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        refresh_interval: int = 24 * 3600,
        refresh_margin: int = 7 * 24 * 3600,
        retry_after: int = 60,
    ) -> None:
        self.fetcher = fetcher
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.refresh_interval = refresh_interval
        self.refresh_margin = refresh_margin
        self.retry_after = retry_after
        self._memory: dict[tuple[str, str, str], _Entry] = {}
        self._failed_at: dict[tuple[str, str, str], int] = {}
        # One fetch at a time per platform (no thundering herd on the PCCS), and a platform's slow
        # fetch holds up no other platform's requests: a lock per (tee, FMSPC, CA). The key comes from
        # a quote not yet verified, so a lock lives only while requests use it ([lock, users]), and
        # the table holds no more keys than there are requests in progress.
        self._locks: dict[tuple[str, str, str], list[Any]] = {}
        self.wait_timeout = 60.0  # a request waits this long for another's fetch of its platform
        self._guard = threading.Lock()  # the lock table and the counter
        self.fetches = 0  # how many fetches were attempted (for operators and tests)

    def _path(self, key: tuple[str, str, str]) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key[0]}-{key[1]}-{key[2]}.json"

    def _load(self, key: tuple[str, str, str]) -> _Entry | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            doc = json.loads(path.read_text("utf-8"))
            entry = _Entry(Collateral.from_json(doc["collateral"], source=str(path)), int(doc["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError, CollateralError) as exc:
            log.warning("ignoring unreadable collateral cache file %s: %s", path, exc)
            return None
        self._memory[key] = entry
        return entry

    def _store(self, key: tuple[str, str, str], entry: _Entry) -> None:
        self._memory[key] = entry
        path = self._path(key)
        if path is not None:
            doc = {"fetched_at": entry.fetched_at, "collateral": entry.collateral.json_text}
            try:
                write_file_atomic(path, json.dumps(doc).encode(), mode=PUBLIC_MODE)
            except OSError as exc:  # the fetched set is good: serve it from memory, do not deny for a disk
                log.warning("cannot write the collateral cache file %s: %s (kept in memory only)", path,
                            exc.strerror or exc)

    def _fresh(self, entry: _Entry, now: int) -> bool:
        c = entry.collateral
        return (
            c.issue_date <= now < c.next_update - self.refresh_margin
            and now < entry.fetched_at + self.refresh_interval
        )

    def get(self, quote: Quote, *, now: int) -> Collateral:
        if quote.fmspc is None or quote.pck_ca is None:
            raise CollateralUnavailable(
                "cannot tell the quote's FMSPC / PCK CA (no readable PCK certificate)"
            )
        key = (quote.tee, quote.fmspc, quote.pck_ca)
        with self._guard:
            slot = self._locks.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        lock: threading.Lock = slot[0]
        try:
            if not lock.acquire(blocking=False):
                # Another request is fetching this platform's collateral. A cached set that is still
                # valid is the answer meanwhile (a refresh ahead of expiry); without one, wait for it.
                entry = self._memory.get(key)
                if entry is not None and entry.collateral.valid_at(now):
                    return entry.collateral
                if not lock.acquire(timeout=self.wait_timeout):
                    raise CollateralUnavailable(f"another request has been fetching the collateral of "
                                                f"{'/'.join(key)} for over {self.wait_timeout:g} s")
            try:
                return self._get(key, quote, now)
            finally:
                lock.release()
        finally:
            with self._guard:
                slot[1] -= 1
                if not slot[1]:
                    del self._locks[key]

    def _get(self, key: tuple[str, str, str], quote: Quote, now: int) -> Collateral:
        entry = self._load(key)
        if entry is not None and self._fresh(entry, now):
            return entry.collateral
        error: Exception | None = None
        failed_at = self._failed_at.get(key)
        if failed_at is None or not (failed_at <= now < failed_at + self.retry_after):
            with self._guard:
                self.fetches += 1
            try:
                fetched = self.fetcher.fetch(*key)
                if fetched.fmspc != quote.fmspc:
                    raise CollateralInvalid(
                        f"fetched collateral is for FMSPC {fetched.fmspc}, asked {quote.fmspc}"
                    )
            except CollateralError as exc:
                error = exc
                if len(self._failed_at) >= 1024:  # (keys come from unverified quotes: keep it bounded)
                    self._failed_at = {k: t for k, t in self._failed_at.items() if t <= now < t + self.retry_after}
                self._failed_at[key] = now
                log.warning("collateral refresh for %s failed: %s", "/".join(key), exc)
            else:
                self._failed_at.pop(key, None)
                if entry is None or fetched.next_update >= entry.collateral.next_update:
                    entry = _Entry(fetched, now)
                    self._store(key, entry)
        else:
            error = CollateralUnavailable("the last fetch failed moments ago; not retrying yet")
        if entry is not None and entry.collateral.valid_at(now):
            return entry.collateral
        where = "/".join(key)
        if entry is not None:
            raise CollateralExpired(
                f"collateral for {where} is not valid at {now} (valid {entry.collateral.issue_date}.."
                f"{entry.collateral.next_update}) and no fresh set could be fetched"
                + (f": {error}" if error else "")
            )
        raise CollateralUnavailable(f"no collateral for {where}: {error}")
