"""Intel DCAP quotes (SGX v3, TDX v4 and v5) as frozen dataclasses.

Strategy: pure bytes → dataclasses, no I/O, no policy. Layouts follow Intel's ``sgx_quote_3.h``,
``sgx_quote_4.h``, ``sgx_quote_5.h`` and ``sgx_report.h`` as tabled in dcap-attestation.md §4
(all integers little-endian). Every read goes through :class:`_Reader`, which raises
:class:`MalformedQuote` with the absolute offset and the field name; nothing else may escape the
parser (a Hypothesis test feeds it garbage). Parsing does not mean trusting: the signature, the PCK
chain and the collateral are checked by ``_dcap`` (or ``sim`` for simulated quotes).

Real quotes often arrive in a fixed-size buffer (8000 bytes from some quote libraries), so bytes after
the signature data are tolerated and counted in ``Quote.trailing_bytes``; they are not signed.
"""

from __future__ import annotations

import binascii
import enum
import functools
import re
import struct
from dataclasses import dataclass, field

from ._errors import MalformedQuote, UnsupportedQuoteVersion

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "SIM_QE_VENDOR_ID",
    "SgxFlags",
    "TdAttributes",
    "QuoteHeader",
    "SgxReportBody",
    "TdReport",
    "CertificationData",
    "SignatureData",
    "Quote",
    "parse_quote",
    "decode_quote_bytes",
]

INTEL_QE_VENDOR_ID = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")
#: The QE vendor id of teeserve's simulated TEE (see ``teeserve.attest.sim``): never Intel's.
SIM_QE_VENDOR_ID = b"SIMULATED-TEE-v1"

HEADER_SIZE = 48
SGX_REPORT_BODY_SIZE = 384
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
TEE_TYPE_SGX = 0x00
TEE_TYPE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
_MAX_NESTING = 2


class SgxFlags(enum.IntFlag):
    """SGX ``ATTRIBUTES.FLAGS`` bits (``sgx_attributes.h``)."""

    INIT = 0x1
    DEBUG = 0x2
    MODE64BIT = 0x4
    PROVISION_KEY = 0x10
    EINITTOKEN_KEY = 0x20
    CET = 0x40
    KSS = 0x80
    AEXNOTIFY = 0x400


class TdAttributes(enum.IntFlag):
    """TDX ``TD_ATTRIBUTES`` bits (dcap-attestation.md §4.3)."""

    DEBUG = 1 << 0
    SEPT_VE_DISABLE = 1 << 28
    PKS = 1 << 30
    KL = 1 << 31
    PERFMON = 1 << 63


def flag_names(flags: int, kind: type[enum.IntFlag]) -> tuple[str, ...]:
    """Names of the known bits set in ``flags``, plus ``0x...`` for unknown ones."""
    names = [m.name for m in kind if m.name and flags & m.value]
    unknown = flags & ~sum(m.value for m in kind)
    if unknown:
        names.append(f"0x{unknown:x}")
    return tuple(names)


class _Reader:
    """Bounds-checked little-endian reads over ``buf[start:end]`` that name the field on failure."""

    def __init__(self, buf: bytes, offset: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.offset = offset
        self.end = len(buf) if end is None else end

    def take(self, n: int, field_name: str) -> bytes:
        if n < 0 or self.offset + n > self.end:
            raise MalformedQuote(
                self.offset, field_name, f"needs {n} bytes, {max(self.end - self.offset, 0)} left"
            )
        data = self.buf[self.offset : self.offset + n]
        self.offset += n
        return data

    def u16(self, field_name: str) -> int:
        return int(struct.unpack("<H", self.take(2, field_name))[0])

    def u32(self, field_name: str) -> int:
        return int(struct.unpack("<I", self.take(4, field_name))[0])

    def u64(self, field_name: str) -> int:
        return int(struct.unpack("<Q", self.take(8, field_name))[0])


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    """The common 48-byte header (§4.1). For v4/v5 ``qe_svn``/``pce_svn`` are reserved (0)."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class SgxReportBody:
    """``sgx_report_body_t`` (384 bytes): the enclave's identity as the CPU measured it (§4.2)."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    flags: int
    xfrm: int
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @property
    def flag_names(self) -> tuple[str, ...]:
        return flag_names(self.flags, SgxFlags)

    @property
    def debug(self) -> bool:
        return bool(self.flags & SgxFlags.DEBUG)

    @property
    def attributes(self) -> bytes:
        """The 16-byte ATTRIBUTES field (flags then xfrm), as dcap-qvl prints it."""
        return struct.pack("<QQ", self.flags, self.xfrm)


@dataclass(frozen=True, slots=True)
class TdReport:
    """TD report body: TD 1.0 (584 bytes) or TD 1.5 (648 bytes, adds two fields) (§4.3–4.4)."""

    kind: str  # "TD10" or "TD15"
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: int
    xfam: int
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def td_attribute_names(self) -> tuple[str, ...]:
        return flag_names(self.td_attributes, TdAttributes)

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes & TdAttributes.DEBUG)

    @property
    def rtmr0(self) -> bytes:
        return self.rtmrs[0]

    @property
    def rtmr1(self) -> bytes:
        return self.rtmrs[1]

    @property
    def rtmr2(self) -> bytes:
        return self.rtmrs[2]

    @property
    def rtmr3(self) -> bytes:
        return self.rtmrs[3]


@dataclass(frozen=True, slots=True)
class CertificationData:
    """Certification data: ``type`` 5 carries the PEM PCK chain; 6 nests a QE report (TDX)."""

    type: int
    data: bytes
    qe_report: SgxReportBody | None = None
    qe_report_signature: bytes | None = None
    qe_auth_data: bytes | None = None
    inner: CertificationData | None = None

    def pck_chain_pem(self) -> bytes | None:
        """The PEM PCK chain (leaf, Platform/Processor CA, root) if this data (or the nested one) has it."""
        if self.type == CERT_DATA_PCK_CHAIN:
            return self.data.rstrip(b"\x00")
        if self.inner is not None:
            return self.inner.pck_chain_pem()
        return None


@dataclass(frozen=True, slots=True)
class SignatureData:
    """``sgx_ql_ecdsa_sig_data_t``: the quote signature and how its key is certified."""

    signature: bytes  # r || s over header || body
    attestation_key: bytes  # x || y
    qe_report: SgxReportBody | None
    qe_report_signature: bytes | None
    qe_auth_data: bytes | None
    certification: CertificationData

    def pck_chain_pem(self) -> bytes | None:
        return self.certification.pck_chain_pem()


@dataclass(frozen=True, slots=True)
class Quote:
    """A parsed (not verified) quote. ``body`` is an :class:`SgxReportBody` or a :class:`TdReport`."""

    raw: bytes = field(repr=False)
    header: QuoteHeader
    body: SgxReportBody | TdReport
    body_type: int | None  # quote v5 only: 2 = TD10, 3 = TD15
    signed_length: int  # the signature covers raw[:signed_length]
    signature_data: SignatureData
    trailing_bytes: int
    fmspc: str | None  # 12 upper-case hex digits, from the PCK leaf's SGX extension
    pck_ca: str | None  # "platform" or "processor" (the PCK leaf's issuer)

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def tee(self) -> str:
        """``"sgx"`` or ``"tdx"`` as the layout says; see :attr:`simulated` for teeserve's simulated TEE."""
        return "tdx" if isinstance(self.body, TdReport) else "sgx"

    @property
    def simulated(self) -> bool:
        return self.header.qe_vendor_id == SIM_QE_VENDOR_ID

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @property
    def debug(self) -> bool:
        return self.body.debug

    def __repr__(self) -> str:
        kind = "SIMULATED sgx" if self.simulated else self.tee
        return (
            f"Quote({kind} v{self.version}, {type(self.body).__name__}, fmspc={self.fmspc}, "
            f"report_data={self.report_data.hex()})"
        )


def _parse_header(r: _Reader) -> QuoteHeader:
    version = r.u16("header.version")
    att_key_type = r.u16("header.att_key_type")
    tee_type = r.u32("header.tee_type")
    qe_svn = r.u16("header.qe_svn")
    pce_svn = r.u16("header.pce_svn")
    vendor = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    return QuoteHeader(version, att_key_type, tee_type, qe_svn, pce_svn, vendor, user_data)


# sgx_report_body_t in one unpack (the fast path when all 384 bytes are there)
_SGX_BODY = struct.Struct("<16sI12s16sQQ32s32s32s32s64sHHH42s16s64s")
# TD report 1.0 (584 bytes), tee_tcb_svn .. report_data
_TD10_BODY = struct.Struct("<16s48s48s8sQQ48s48s48s48s48s48s48s48s64s")
assert _SGX_BODY.size == SGX_REPORT_BODY_SIZE and _TD10_BODY.size == TD10_BODY_SIZE


def _parse_sgx_body(r: _Reader, prefix: str = "report") -> SgxReportBody:
    # sgx_report_body_t, body-relative offsets in dcap-attestation.md §4.2 / gramine-formats.md §3.6
    if r.end - r.offset >= SGX_REPORT_BODY_SIZE:
        f = _SGX_BODY.unpack_from(r.buf, r.offset)
        r.offset += SGX_REPORT_BODY_SIZE
        # skip the reserved fields (2, 7, 9, 14)
        return SgxReportBody(
            f[0], f[1], f[3], f[4], f[5], f[6], f[8], f[10], f[11], f[12], f[13], f[15], f[16]
        )
    # short input: read field by field so the error names the exact field and offset
    cpu_svn = r.take(16, f"{prefix}.cpu_svn")
    misc_select = r.u32(f"{prefix}.misc_select")
    r.take(12, f"{prefix}.reserved1")
    isv_ext_prod_id = r.take(16, f"{prefix}.isv_ext_prod_id")
    flags = r.u64(f"{prefix}.attributes.flags")
    xfrm = r.u64(f"{prefix}.attributes.xfrm")
    mr_enclave = r.take(32, f"{prefix}.mr_enclave")
    r.take(32, f"{prefix}.reserved2")
    mr_signer = r.take(32, f"{prefix}.mr_signer")
    r.take(32, f"{prefix}.reserved3")
    config_id = r.take(64, f"{prefix}.config_id")
    isv_prod_id = r.u16(f"{prefix}.isv_prod_id")
    isv_svn = r.u16(f"{prefix}.isv_svn")
    config_svn = r.u16(f"{prefix}.config_svn")
    r.take(42, f"{prefix}.reserved4")
    isv_family_id = r.take(16, f"{prefix}.isv_family_id")
    report_data = r.take(64, f"{prefix}.report_data")
    return SgxReportBody(
        cpu_svn, misc_select, isv_ext_prod_id, flags, xfrm, mr_enclave, mr_signer, config_id,
        isv_prod_id, isv_svn, config_svn, isv_family_id, report_data,
    )  # fmt: skip


def _parse_td_body(r: _Reader, kind: str) -> TdReport:
    size = TD15_BODY_SIZE if kind == "TD15" else TD10_BODY_SIZE
    if r.end - r.offset >= size:
        f = _TD10_BODY.unpack_from(r.buf, r.offset)
        r.offset += TD10_BODY_SIZE
        svn2 = service = None
        if kind == "TD15":
            svn2, service = r.take(16, "td.tee_tcb_svn2"), r.take(48, "td.mr_service_td")
        return TdReport(kind, *f[:10], (f[10], f[11], f[12], f[13]), f[14], svn2, service)
    tee_tcb_svn = r.take(16, "td.tee_tcb_svn")
    mr_seam = r.take(48, "td.mr_seam")
    mr_signer_seam = r.take(48, "td.mr_signer_seam")
    seam_attributes = r.take(8, "td.seam_attributes")
    td_attributes = r.u64("td.td_attributes")
    xfam = r.u64("td.xfam")
    mr_td = r.take(48, "td.mr_td")
    mr_config_id = r.take(48, "td.mr_config_id")
    mr_owner = r.take(48, "td.mr_owner")
    mr_owner_config = r.take(48, "td.mr_owner_config")
    rtmrs = (r.take(48, "td.rtmr0"), r.take(48, "td.rtmr1"), r.take(48, "td.rtmr2"), r.take(48, "td.rtmr3"))
    report_data = r.take(64, "td.report_data")
    tee_tcb_svn2 = mr_service_td = None
    if kind == "TD15":
        tee_tcb_svn2 = r.take(16, "td.tee_tcb_svn2")
        mr_service_td = r.take(48, "td.mr_service_td")
    return TdReport(
        kind, tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam, mr_td,
        mr_config_id, mr_owner, mr_owner_config, rtmrs, report_data, tee_tcb_svn2, mr_service_td,
    )  # fmt: skip


def _parse_cert_data(r: _Reader, depth: int = 0) -> CertificationData:
    start = r.offset
    cert_type = r.u16("certification_data.type")
    size = r.u32("certification_data.size")
    data = r.take(size, "certification_data.data")
    if cert_type != CERT_DATA_QE_REPORT:
        return CertificationData(cert_type, data)
    if depth >= _MAX_NESTING:
        raise MalformedQuote(start, "certification_data.type", "QE report data nested too deeply")
    inner = _Reader(r.buf, r.offset - size, r.offset)
    qe_report = _parse_sgx_body(inner, "qe_report")
    qe_sig = inner.take(64, "qe_report_signature")
    auth = inner.take(inner.u16("qe_auth_data.size"), "qe_auth_data")
    nested = _parse_cert_data(inner, depth + 1)
    if inner.offset != inner.end:
        raise MalformedQuote(inner.offset, "certification_data.size", "QE report data longer than its parts")
    return CertificationData(cert_type, data, qe_report, qe_sig, auth, nested)


def _parse_signature_data(r: _Reader, version: int) -> SignatureData:
    size = r.u32("signature_data_len")
    end = r.offset + size
    if end > r.end:
        left = r.end - r.offset
        raise MalformedQuote(r.offset - 4, "signature_data_len", f"{size} bytes declared, {left} left")
    s = _Reader(r.buf, r.offset, end)
    signature = s.take(64, "signature_data.signature")
    att_key = s.take(64, "signature_data.attestation_key")
    qe_report = qe_sig = auth = None
    if version == 3:
        # v3: the QE report and auth data sit directly in the signature data (§4.2)
        qe_report = _parse_sgx_body(s, "qe_report")
        qe_sig = s.take(64, "qe_report_signature")
        auth = s.take(s.u16("qe_auth_data.size"), "qe_auth_data")
    cert = _parse_cert_data(s)
    if s.offset != end:
        raise MalformedQuote(s.offset, "signature_data_len", "signature data longer than its parts")
    if version != 3 and cert.qe_report is not None:
        qe_report, qe_sig, auth = cert.qe_report, cert.qe_report_signature, cert.qe_auth_data
    r.offset = end
    return SignatureData(signature, att_key, qe_report, qe_sig, auth, cert)


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


def _pck_info(chain_pem: bytes | None) -> tuple[str | None, str | None]:
    """FMSPC and PCK CA type from the PCK leaf (best effort: ``(None, None)`` if it cannot be read)."""
    if not chain_pem:
        return None, None
    return _pck_info_cached(chain_pem)


@functools.lru_cache(maxsize=256)
def _pck_info_cached(chain_pem: bytes) -> tuple[str | None, str | None]:
    # a platform's quotes all carry the same PCK chain: decode each chain once
    pems = _PEM_CERT.findall(chain_pem)
    if not pems:
        return None, None
    try:
        import dcap_qvl
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        ext = dcap_qvl.parse_pck_extension_from_pem(pems[0])
        fmspc = bytes(ext.fmspc).hex().upper()
        leaf = x509.load_pem_x509_certificate(pems[0])
        cns = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        issuer_cn = str(cns[0].value) if cns else ""
    except (ValueError, TypeError):
        return None, None
    ca = "processor" if "Processor" in issuer_cn else "platform" if "Platform" in issuer_cn else None
    return (fmspc if len(fmspc) == 12 else None), ca


def parse_quote(raw: bytes | bytearray | memoryview) -> Quote:
    """Parse a binary DCAP quote: SGX v3, TDX v4 (TD 1.0) or TDX v5 (TD 1.0 / TD 1.5 bodies).

    Raises:
        MalformedQuote: truncated or inconsistent bytes (with the offset and field).
        UnsupportedQuoteVersion: another version, TEE type, body type or attestation key type.
        TypeError: ``raw`` is not bytes-like.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TypeError(f"quote must be bytes, not {type(raw).__name__}")
    buf = bytes(raw)
    r = _Reader(buf)
    header = _parse_header(r)
    v = header.version
    if v not in (3, 4, 5):
        raise UnsupportedQuoteVersion(v, "teeserve reads SGX quote v3 and TDX quote v4/v5")
    if header.att_key_type != ATT_KEY_ECDSA_P256:
        raise UnsupportedQuoteVersion(v, f"attestation key type {header.att_key_type} (only 2 = ECDSA P-256)")
    body_type: int | None = None
    body: SgxReportBody | TdReport
    if v == 3:
        if header.tee_type != 0:
            raise MalformedQuote(4, "header.tee_type", "reserved field of an SGX v3 quote is not zero")
        body = _parse_sgx_body(r)
    else:
        if header.tee_type != TEE_TYPE_TDX:
            detail = f"TEE type 0x{header.tee_type:x} (v{v} is read for TDX 0x81 only)"
            raise UnsupportedQuoteVersion(v, detail)
        if v == 4:
            body = _parse_td_body(r, "TD10")
        else:
            body_type = r.u16("body.type")
            size_off = r.offset
            body_size = r.u32("body.size")
            expected = {2: ("TD10", TD10_BODY_SIZE), 3: ("TD15", TD15_BODY_SIZE)}.get(body_type)
            if expected is None:
                raise UnsupportedQuoteVersion(v, f"body type {body_type} (only 2 = TD 1.0, 3 = TD 1.5)")
            if body_size != expected[1]:
                raise MalformedQuote(size_off, "body.size", f"{body_size} for body type {body_type}")
            body = _parse_td_body(r, expected[0])
    signed_length = r.offset
    sig = _parse_signature_data(r, v)
    fmspc, ca = _pck_info(sig.pck_chain_pem())
    return Quote(buf, header, body, body_type, signed_length, sig, len(buf) - r.offset, fmspc, ca)


_HEX = re.compile(rb"\A(?:0x)?[0-9a-fA-F\s]+\Z")


def decode_quote_bytes(data: bytes) -> bytes:
    """Raw quote bytes from a file's content: binary as is, or ASCII hex (optional ``0x``, whitespace).

    A binary quote starts with its version (``03 00``, ``04 00``, ``05 00``), which is not hex text,
    so the two cannot be confused.

    Raises:
        MalformedQuote: hex text of odd length.
    """
    if data and _HEX.match(data):
        text = re.sub(rb"\s+", b"", data)
        if text[:2].lower() == b"0x":
            text = text[2:]
        try:
            return binascii.unhexlify(text)
        except binascii.Error as exc:
            raise MalformedQuote(0, "hex", "odd number of hex digits") from exc
    return data
