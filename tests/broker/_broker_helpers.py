"""Helpers for the broker tests (no tests here): clients, forged RA-TLS certificates, raw TLS sessions."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from teeserve.attest import ratls, sim
from teeserve.broker import obtain_secrets

#: the secrets (recognisable so the leak scans can look for them)
DEFAULT_KEY = bytes.fromhex("c0ffee00deadbeef0123456789abcdef")
MODEL_KEY = bytes.fromhex("5ec2e75ec2e75ec2e75ec2e75ec2e700")
HEX_KEY = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
CONFIG = b"teeserve test server config v1\n"
#: the simulated MRENCLAVE the policies pin (fixed: the code measurement changes with every code edit)
MR_ENCLAVE = bytes.fromhex("5e" * 32)
SECRETS = (DEFAULT_KEY, MODEL_KEY, HEX_KEY)




def obtain(addr: str, ca: Path, key: Path, secrets: tuple[str, ...] = ("default",), **kw: Any) -> dict[str, bytes]:
    kw.setdefault("config", CONFIG)
    kw.setdefault("timeout", 5.0)
    if kw.pop("measured", False) is False:
        opts = dict(kw.get("provider_options") or {})
        opts.setdefault("mr_enclave", MR_ENCLAVE)
        kw["provider_options"] = opts
    return asyncio.run(obtain_secrets(tee="sim", broker=addr, broker_ca=ca, secrets=secrets, sim_key=key, **kw))


def sim_credentials(key: Path, *, mr_enclave: bytes | None = MR_ENCLAVE, isv_prod_id: int = 0, isv_svn: int = 0,
                    debug: bool = False, config: bytes = CONFIG) -> ratls.RaTlsCredentials:  # fmt: skip
    from teeserve.attest.evidence import SimProvider

    provider = SimProvider(key, mr_enclave=mr_enclave, config=config, isv_prod_id=isv_prod_id, isv_svn=isv_svn,
                           debug=debug)  # fmt: skip
    return ratls.make_certificate(provider)


def forge(key: Any, legacy_quote: bytes | None, *, extra_ext: tuple[x509.ObjectIdentifier, bytes] | None = None
          ) -> ratls.RaTlsCredentials:  # fmt: skip
    """A certificate for ``key`` carrying an arbitrary legacy quote extension (or none)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(ratls.DEFAULT_NOT_BEFORE).not_valid_after(ratls.DEFAULT_NOT_AFTER)
    )  # fmt: skip
    if legacy_quote is not None:
        b = b.add_extension(x509.UnrecognizedExtension(ratls.LEGACY_QUOTE_OID, legacy_quote), critical=False)
    if extra_ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(*extra_ext), critical=False)
    cert = b.sign(key, hashes.SHA256())
    return ratls.RaTlsCredentials(
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),  # fmt: skip
        key_type="ec-p384",
    )


def spki(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def sim_quote_for(sim_key: Path, spki_der: bytes, mr_enclave: bytes, **kw: Any) -> bytes:
    return sim.make_quote(sim.load_signing_key(sim_key), ratls.key_binding_report_data(spki_der),
                          mr_enclave=mr_enclave, **kw)  # fmt: skip


def new_key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


async def fetch_with(addr: str, ca: Path, creds: ratls.RaTlsCredentials) -> bytes:
    from teeserve import provision

    return await provision.fetch_secret(addr, ca, creds, timeout=5.0)


def raw_tls(addr: str, ca: Path, creds: ratls.RaTlsCredentials, tmp: Path, timeout: float = 5.0) -> ssl.SSLSocket:
    """A TLS connection to the broker presenting ``creds`` (for sending arbitrary bytes)."""
    host, port = addr.rsplit(":", 1)
    cert, key = tmp / "client.pem", tmp / "client.key"
    cert.write_bytes(creds.cert_pem)
    key.write_bytes(creds.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    return ctx.wrap_socket(sock, server_hostname=host)


def read_all(s: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes (b"" when it says nothing at all)."""
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
        pass
    return out


def policy_text(sim_keys: Any, mr_enclave: str, *, extra: str = "", default_format: str = "raw") -> str:
    """default (by MRENCLAVE), model-key (by MRSIGNER + ISV_PROD_ID 7 + ISV_SVN >= 3), hex-key (hex format)."""
    return (
        f'version = 1\n[simulation]\ntrusted_keys = ["{sim_keys.pub}", "{sim_keys.pub2}"]\n'
        f'[secrets.default]\nfile = "default.key"\nformat = "{default_format}"\ntee = ["sim"]\n'
        f'allow_simulation = true\n[[secrets.default.sim]]\nmr_enclave = "{mr_enclave}"\n'
        f'[secrets.model-key]\nfile = "model.key"\ntee = ["sim"]\nallow_simulation = true\n'
        f'[[secrets.model-key.sim]]\nmr_signer = "{sim_keys.key_id}"\nisv_prod_id = 7\nmin_isv_svn = 3\n'
        f'[secrets.hex-key]\nfile = "hex.key"\nformat = "hex"\ntee = ["sim"]\nallow_simulation = true\n'
        f'[[secrets.hex-key.sim]]\nmr_enclave = "{mr_enclave}"\n'
        f'[secrets.tcb-strict]\nfile = "model.key"\ntee = ["sim"]\nallow_simulation = true\n'
        f'tcb_statuses = ["SWHardeningNeeded"]\n[[secrets.tcb-strict.sim]]\nmr_enclave = "{mr_enclave}"\n'
        + extra
    )


def write_secrets(d: Path) -> None:
    for name, data in (("default.key", DEFAULT_KEY), ("model.key", MODEL_KEY), ("hex.key", HEX_KEY)):
        (d / name).write_bytes(data)
        (d / name).chmod(0o600)


