"""The simulated TEE: SGX-shaped quotes signed by a local P-256 key, for laptops and CI.

A SIMULATED quote proves nothing about hardware. It exists so the whole flow (evidence, RA-TLS,
broker, policy, key release) runs the same code paths without SGX/TDX, and it is accepted only by a
policy that says ``allow_simulation = true`` and trusts the simulation public key. Everything that
prints or logs one says SIMULATED.

Layout (the SGX DCAP v3 layout of dcap-attestation.md §4.2, so ``parse_quote`` reads it as SGX v3):

- header (48 bytes): version 3, attestation key type 2, QE SVN / PCE SVN 0, QE vendor id
  ``SIMULATED-TEE-v1`` (never Intel's, which is how :func:`is_simulated` tells), user data = the
  first 20 bytes of the key id (SHA-256 of the simulation public key's raw X||Y);
- report body (384 bytes): flags INIT|MODE64BIT (+DEBUG if asked), xfrm 0x3, ``mr_enclave`` as
  given (usually :func:`code_measurement`), ``mr_signer`` = the key id, ISV prod id / SVN, the
  report data zero-padded to 64 bytes;
- signature data: ECDSA-P256/SHA-256 signature r||s over header||body by the simulation key, the
  64-byte public key, an all-zero QE report and signature, empty QE auth data, and certification
  data of type :data:`SIM_CERT_DATA_TYPE` holding :data:`SIM_CERT_DATA`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from .._io import PUBLIC_MODE, SECRET_MODE, OutputExists, write_file_atomic
from ._errors import (
    QuoteSignatureInvalid,
    QuoteVerificationFailed,
    SimulationKeyInvalid,
    UntrustedSimulationKey,
)
from ._quote import SIM_QE_VENDOR_ID, SgxFlags, parse_quote
from ._verified import TeeKind, VerifiedQuote

__all__ = [
    "KEY_FILE",
    "PUB_FILE",
    "SIM_QE_VENDOR_ID",
    "SIM_CERT_DATA_TYPE",
    "SIM_CERT_DATA",
    "SIM_TCB_STATUS",
    "init_key",
    "load_signing_key",
    "load_public_key",
    "key_id",
    "code_measurement",
    "make_quote",
    "is_simulated",
    "verify_quote",
]

log = logging.getLogger("teeserve.attest.sim")

KEY_FILE = "sim_attest_key.pem"
PUB_FILE = "sim_attest_key.pub.pem"
SIM_CERT_DATA_TYPE = 0x5E51  # outside Intel's 1..7: "no PCK chain, simulated"
SIM_CERT_DATA = b"TEESERVE SIMULATED QUOTE: NO HARDWARE, NO PCK CHAIN"
SIM_TCB_STATUS = "UpToDate"
_XFRM = 0x3
# what follows the signature and the key in the signature data: zero QE report and signature, no
# auth data, the simulator's certification data. Fixed, so a changed byte anywhere is detected.
_SIG_TAIL = (
    bytes(384) + bytes(64) + struct.pack("<H", 0)
    + struct.pack("<HI", SIM_CERT_DATA_TYPE, len(SIM_CERT_DATA)) + SIM_CERT_DATA
)  # fmt: skip
#: package data that belongs to the measured code (pyproject's package-data patterns)
_DATA_SUFFIXES = (".py", ".proto", ".toml", ".json", ".j2", ".template", ".typed")


def init_key(out_dir: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Make a simulation attestation key pair in ``out_dir``: the private key (0600) and the public key.

    Raises:
        OutputExists: a key file exists and ``force`` is false.
    """
    out = Path(out_dir)
    key_path, pub_path = out / KEY_FILE, out / PUB_FILE
    if not force:
        for p in (key_path, pub_path):
            if p.exists():
                raise OutputExists(p)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file_atomic(key_path, pem, mode=SECRET_MODE, overwrite=force)
    write_file_atomic(pub_path, pub, mode=PUBLIC_MODE, overwrite=force)
    return key_path, pub_path


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SimulationKeyInvalid(f"{os.fspath(path)}: cannot read the {what}: {exc.strerror}") from exc


def load_signing_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """Load a simulation private key (PEM, EC P-256)."""
    data = _read(path, "simulation signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SimulationKeyInvalid(f"{os.fspath(path)}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SimulationKeyInvalid(f"{os.fspath(path)}: the simulation key must be EC P-256")
    return key


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """Load a simulation public key (PEM SubjectPublicKeyInfo, EC P-256)."""
    data = _read(path, "simulation public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SimulationKeyInvalid(f"{os.fspath(path)}: not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SimulationKeyInvalid(f"{os.fspath(path)}: the simulation key must be EC P-256")
    return key


def _raw_xy(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def key_id(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """SHA-256 of the public key's raw 64-byte X||Y: the MRSIGNER of its quotes."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return hashlib.sha256(_raw_xy(pub)).digest()


def _package_root() -> Path:
    import teeserve

    return Path(teeserve.__file__).resolve().parent


def code_measurement(config: bytes = b"", *, root: str | os.PathLike[str] | None = None) -> bytes:
    """The simulated MRENCLAVE: SHA-256 over the teeserve package's files, then ``config``.

    Every ``*.py`` and package-data file under ``root`` (default: the installed ``teeserve``
    package), skipping ``__pycache__`` and hidden entries, in order of relative POSIX path, is hashed
    as ``path UTF-8, NUL, u64 LE length, content``; then ``b"config\\0"``, the u64 LE length and the
    config bytes. A change to any code file or to the configuration changes the result.
    """
    base = Path(root) if root is not None else _package_root()
    h = hashlib.sha256(b"teeserve-sim-measurement-v1\0")
    files = []
    for path in base.rglob("*"):
        rel = path.relative_to(base)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.name.endswith(_DATA_SUFFIXES):
            files.append((rel.as_posix(), path))
    for rel_name, path in sorted(files):
        content = path.read_bytes()
        h.update(rel_name.encode() + b"\0" + struct.pack("<Q", len(content)))
        h.update(content)
    h.update(b"config\0" + struct.pack("<Q", len(config)))
    h.update(config)
    return h.digest()


def make_quote(
    signing_key: ec.EllipticCurvePrivateKey,
    report_data: bytes,
    *,
    mr_enclave: bytes,
    isv_prod_id: int = 0,
    isv_svn: int = 0,
    debug: bool = False,
) -> bytes:
    """A SIMULATED SGX v3 quote over ``report_data`` (≤ 64 bytes, zero-padded) signed by ``signing_key``.

    Raises:
        ValueError: wrong sizes or ranges.
    """
    if len(report_data) > 64:
        raise ValueError(f"report_data is {len(report_data)} bytes, at most 64")
    if len(mr_enclave) != 32:
        raise ValueError(f"mr_enclave must be 32 bytes, got {len(mr_enclave)}")
    if not (0 <= isv_prod_id <= 0xFFFF and 0 <= isv_svn <= 0xFFFF):
        raise ValueError("isv_prod_id and isv_svn are 16-bit values")
    pub_xy = _raw_xy(signing_key.public_key())
    kid = hashlib.sha256(pub_xy).digest()
    header = struct.pack("<HHIHH", 3, 2, 0, 0, 0) + SIM_QE_VENDOR_ID + kid[:20]
    flags = SgxFlags.INIT | SgxFlags.MODE64BIT | (SgxFlags.DEBUG if debug else 0)
    body = b"".join([
        bytes(16), bytes(4), bytes(12), bytes(16),          # cpu_svn, misc_select, reserved, isv_ext_prod_id
        struct.pack("<QQ", int(flags), _XFRM),              # attributes
        mr_enclave, bytes(32), kid, bytes(32), bytes(64),   # mr_enclave, rsv, mr_signer, rsv, config_id
        struct.pack("<HHH", isv_prod_id, isv_svn, 0),       # isv_prod_id, isv_svn, config_svn
        bytes(42), bytes(16),                               # reserved, isv_family_id
        report_data.ljust(64, b"\0"),
    ])  # fmt: skip
    der = signing_key.sign(header + body, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    sig_data = sig + pub_xy + _SIG_TAIL
    return header + body + struct.pack("<I", len(sig_data)) + sig_data


def is_simulated(raw_quote: bytes) -> bool:
    """True when the bytes carry the simulated TEE's QE vendor id (a cheap check, no verification)."""
    return len(raw_quote) >= 28 and raw_quote[:2] == b"\x03\x00" and raw_quote[12:28] == SIM_QE_VENDOR_ID


def verify_quote(
    raw_quote: bytes, trusted_keys: Sequence[ec.EllipticCurvePublicKey], *, now: int | None = None
) -> VerifiedQuote:
    """Verify a SIMULATED quote: well-formed, signed by one of ``trusted_keys``, not debug.

    The result has ``simulated=True``, ``tee=TeeKind.SIM`` and TCB status ``UpToDate`` (SIMULATED).

    Raises:
        MalformedQuote / UnsupportedQuoteVersion: not a quote.
        QuoteVerificationFailed: not a simulated quote, wrong marker, or a debug enclave.
        UntrustedSimulationKey: signed by a key outside ``trusted_keys``.
        QuoteSignatureInvalid: the signature does not verify.
    """
    quote = parse_quote(raw_quote)
    if not quote.simulated:
        raise QuoteVerificationFailed("not a SIMULATED quote (QE vendor id is not the simulated TEE's)")
    sig = quote.signature_data
    if quote.raw[quote.signed_length + 4 + 128 :] != _SIG_TAIL:
        raise QuoteVerificationFailed("SIMULATED quote: certification data or length is not the simulator's")
    trusted = {_raw_xy(k): k for k in trusted_keys}
    key = trusted.get(sig.attestation_key)
    if key is None:
        untrusted = hashlib.sha256(sig.attestation_key).hexdigest()
        raise UntrustedSimulationKey(f"SIMULATED quote signed by an untrusted key (key id {untrusted})")
    body = quote.body
    kid = hashlib.sha256(sig.attestation_key).digest()
    r, s = int.from_bytes(sig.signature[:32], "big"), int.from_bytes(sig.signature[32:], "big")
    der = encode_dss_signature(r, s)
    try:
        key.verify(der, quote.raw[: quote.signed_length], ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise QuoteSignatureInvalid("SIMULATED quote: signature does not verify") from exc
    if getattr(body, "mr_signer", None) != kid or quote.header.user_data != kid[:20]:
        raise QuoteVerificationFailed("SIMULATED quote: mr_signer is not the signing key's id")
    if body.debug:
        raise QuoteVerificationFailed("SIMULATED quote: Debug mode is enabled")
    if now is None:
        now = int(time.time())
    verified = VerifiedQuote(
        tee=TeeKind.SIM,
        simulated=True,
        tcb_status=SIM_TCB_STATUS,
        advisory_ids=(),
        quote=quote,
        collateral_expiry=None,
        verified_at=now,
        sim_key_id=kid,
    )
    log.warning("accepted a %s", verified.summary())
    return verified

