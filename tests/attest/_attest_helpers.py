"""Shared helpers for the attest tests: the DCAP vector manifest and a small HTTPS test PCCS."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeserve.attest import decode_quote_bytes

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "dcap"


def manifest() -> list[dict[str, Any]]:
    return json.loads((VECTORS / "manifest.json").read_text())


def entry(vector_id: str) -> dict[str, Any]:
    for e in manifest():
        if e["id"] == vector_id:
            return e
    raise KeyError(vector_id)


#: Vectors whose failure teeserve reports with its own reason, earlier than dcap-qvl's in the manifest:
#: a PCK chain that is not a PEM chain up to Intel's root is refused before any collateral is looked
#: up (attest/_pck_chain.py); dcap-qvl would refuse it later (this vector carries DER certificates).
OWN_REASON = {"intel-qvl-tdx-synthetic-test-root": "PCK certificate chain: no PEM certificates"}


def expected_error(e: dict[str, Any]) -> str:
    """The failure reason to find for vector ``e`` (the manifest's, or teeserve's earlier one)."""
    return OWN_REASON.get(e["id"], e["expected"].get("error_substring", ""))


def quote_of(e: dict[str, Any]) -> bytes:
    return decode_quote_bytes((VECTORS / e["quote_file"]).read_bytes())


def collateral_path(e: dict[str, Any]) -> Path:
    return VECTORS / e["collateral_file"]


def iso(ts: str) -> int:
    return int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


# ---------------------------------------------------------------------------------------------------
# A test PCCS: real HTTPS on 127.0.0.1 with a CA made here, serving one vector collateral set through
# the PCS/PCCS API v4 paths (dcap-attestation.md §7.1), pieces reassembled from the QuoteCollateralV3
# JSON exactly as a PCCS serves them (signed JSON members verbatim, chains URL-encoded in headers).
# ---------------------------------------------------------------------------------------------------


def make_test_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost; returns (ca.pem, server.pem, server.key)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "teeserve test PCCS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp / "pccs-ca.pem", tmp / "pccs.pem", tmp / "pccs.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class PccsState:
    collaterals: list[dict[str, str]]
    up: bool = True
    requests: list[str] = field(default_factory=list)
    #: FMSPC -> an event its TCB info request waits for (a PCCS slow for that platform)
    hold_tcb: dict[str, threading.Event] = field(default_factory=dict)
    #: set when a held TCB info request has arrived
    held: threading.Event = field(default_factory=threading.Event)
    #: bytes of JSON whitespace appended to the TCB info body (an oversize answer)
    tcb_padding: int = 0


def _pick(state: PccsState, tee: str | None, fmspc: str | None) -> dict[str, str] | None:
    for c in state.collaterals:
        tcb = json.loads(c["tcb_info"])
        if tee is not None and tcb.get("id", "SGX").lower() != tee:
            continue
        if fmspc is not None and tcb["fmspc"].upper() != fmspc.upper():
            continue
        return c
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    state: PccsState
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        st.requests.append(self.path)
        if not st.up:
            self._send(b"PCCS is down", status=503)
            return
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")  # sgx|tdx, certification, v4, ...
        tee, rest = parts[0], "/".join(parts[3:])
        enc = urllib.parse.quote
        if rest == "pckcrl":
            c = _pick(st, None, None)
            assert c is not None
            self._send(bytes.fromhex(c["pck_crl"]), {"SGX-PCK-CRL-Issuer-Chain": enc(c["pck_crl_issuer_chain"])})
        elif rest == "tcb":
            hold = st.hold_tcb.get(q.get("fmspc", "").upper())
            if hold is not None:
                st.held.set()
                hold.wait(30)
            c = _pick(st, tee, q.get("fmspc"))
            if c is None:
                self._send(b"", status=404)
                return
            body = '{"tcbInfo":' + c["tcb_info"] + ',"signature":"' + c["tcb_info_signature"] + '"}'
            body += " " * st.tcb_padding
            self._send(body.encode(), {"TCB-Info-Issuer-Chain": enc(c["tcb_info_issuer_chain"])})
        elif rest == "qe/identity":
            c = _pick(st, tee, None)
            if c is None:
                self._send(b"", status=404)
                return
            body = '{"enclaveIdentity":' + c["qe_identity"] + ',"signature":"' + c["qe_identity_signature"] + '"}'
            self._send(body.encode(), {"SGX-Enclave-Identity-Issuer-Chain": enc(c["qe_identity_issuer_chain"])})
        elif rest == "rootcacrl":
            c = _pick(st, None, None)
            assert c is not None
            self._send(c["root_ca_crl"].encode())  # PCCS serves the hex text
        else:
            self._send(b"", status=404)


@dataclass
class RunningPccs:
    url: str
    ca_file: Path
    state: PccsState


@contextmanager
def running_pccs(tmp: Path, collateral_files: list[Path]) -> Iterator[RunningPccs]:
    """Run the test PCCS on 127.0.0.1 (an ephemeral port) in a thread."""
    ca_path, cert_path, key_path = make_test_ca(tmp)
    state = PccsState([json.loads(p.read_text()) for p in collateral_files])
    handler = type("Handler", (_Handler,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield RunningPccs(f"https://127.0.0.1:{server.server_address[1]}", ca_path, state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
