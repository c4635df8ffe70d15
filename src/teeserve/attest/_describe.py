"""Quotes and verdicts as plain dicts (JSON output, audit records) and as text for operators."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ._policy import Verdict
from ._quote import Quote, SgxReportBody
from ._verified import VerifiedQuote

__all__ = ["describe_quote", "describe_verified", "describe_verdict", "format_quote", "utc"]

_CERT_TYPES = {
    1: "PPID in clear",
    2: "PPID RSA-2048 encrypted",
    3: "PPID RSA-3072 encrypted",
    4: "PCK leaf certificate",
    5: "PCK certificate chain",
    6: "QE report certification data",
    7: "platform manifest",
}


def utc(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_quote(quote: Quote) -> dict[str, Any]:
    """Every field an operator or a policy author looks at, hex-encoded."""
    h = quote.header
    cert = quote.signature_data.certification
    inner = cert.inner or cert
    out: dict[str, Any] = {
        "tee": "sim" if quote.simulated else quote.tee,
        "simulated": quote.simulated,
        "version": h.version,
        "att_key_type": h.att_key_type,
        "tee_type": h.tee_type,
        "qe_svn": h.qe_svn,
        "pce_svn": h.pce_svn,
        "qe_vendor_id": h.qe_vendor_id.hex(),
        "user_data": h.user_data.hex(),
        "fmspc": quote.fmspc,
        "pck_ca": quote.pck_ca,
        "certification_data_type": inner.type,
        "certification_data": _CERT_TYPES.get(
            inner.type, "SIMULATED (no PCK chain)" if quote.simulated else "unknown"
        ),
        "signed_length": quote.signed_length,
        "trailing_bytes": quote.trailing_bytes,
    }
    b = quote.body
    if isinstance(b, SgxReportBody):
        out["report"] = {
            "type": "SGX",
            "mr_enclave": b.mr_enclave.hex(),
            "mr_signer": b.mr_signer.hex(),
            "isv_prod_id": b.isv_prod_id,
            "isv_svn": b.isv_svn,
            "attributes_flags": f"0x{b.flags:x}",
            "attributes_flag_names": list(b.flag_names),
            "xfrm": f"0x{b.xfrm:x}",
            "misc_select": f"0x{b.misc_select:x}",
            "cpu_svn": b.cpu_svn.hex(),
            "config_id": b.config_id.hex(),
            "config_svn": b.config_svn,
            "isv_ext_prod_id": b.isv_ext_prod_id.hex(),
            "isv_family_id": b.isv_family_id.hex(),
            "report_data": b.report_data.hex(),
        }
    else:
        out["report"] = {
            "type": b.kind,
            "tee_tcb_svn": b.tee_tcb_svn.hex(),
            "mr_seam": b.mr_seam.hex(),
            "mr_signer_seam": b.mr_signer_seam.hex(),
            "seam_attributes": b.seam_attributes.hex(),
            "td_attributes": f"0x{b.td_attributes:016x}",
            "td_attribute_names": list(b.td_attribute_names),
            "xfam": f"0x{b.xfam:016x}",
            "mr_td": b.mr_td.hex(),
            "mr_config_id": b.mr_config_id.hex(),
            "mr_owner": b.mr_owner.hex(),
            "mr_owner_config": b.mr_owner_config.hex(),
            "rtmr0": b.rtmr0.hex(),
            "rtmr1": b.rtmr1.hex(),
            "rtmr2": b.rtmr2.hex(),
            "rtmr3": b.rtmr3.hex(),
            "report_data": b.report_data.hex(),
        }
        if b.kind == "TD15":
            assert b.tee_tcb_svn2 is not None and b.mr_service_td is not None
            out["report"]["tee_tcb_svn2"] = b.tee_tcb_svn2.hex()
            out["report"]["mr_service_td"] = b.mr_service_td.hex()
    return out


def describe_verified(v: VerifiedQuote) -> dict[str, Any]:
    return {
        "tee": v.tee.value,
        "simulated": v.simulated,
        "tcb_status": v.tcb_status + (" (SIMULATED)" if v.simulated else ""),
        "advisory_ids": list(v.advisory_ids),
        "collateral_expiry": v.collateral_expiry,
        "collateral_expiry_utc": utc(v.collateral_expiry),
        "verified_at": v.verified_at,
        "sim_key_id": v.sim_key_id.hex() if v.sim_key_id else None,
    }


def describe_verdict(verdict: Verdict) -> dict[str, Any]:
    return {
        "secret": verdict.secret,
        "accepted": verdict.accepted,
        "simulated": verdict.simulated,
        "violations": [
            {"rule": x.rule, "expected": x.expected, "actual": x.actual} for x in verdict.violations
        ],
    }


_LABELS = {
    "mr_enclave": "MRENCLAVE", "mr_signer": "MRSIGNER", "isv_prod_id": "ISV_PROD_ID", "isv_svn": "ISV_SVN",
    "mr_td": "MRTD", "rtmr0": "RTMR0", "rtmr1": "RTMR1", "rtmr2": "RTMR2", "rtmr3": "RTMR3",
    "mr_seam": "MRSEAM", "mr_config_id": "MRCONFIGID", "mr_owner": "MROWNER",
    "mr_owner_config": "MROWNERCONFIG",
    "mr_service_td": "MR_SERVICETD",
}  # fmt: skip


def format_quote(quote: Quote) -> str:
    """A human-readable listing of :func:`describe_quote` (used by ``teeserve attest show``)."""
    d = describe_quote(quote)
    r = d["report"]
    if quote.simulated:
        kind = f"SIMULATED (teeserve simulated TEE, SGX layout, quote v{d['version']}): NOT hardware evidence"
    elif r["type"] == "SGX":
        kind = f"SGX (quote v{d['version']})"
    else:
        kind = f"TDX (quote v{d['version']}, {'TD 1.5' if r['type'] == 'TD15' else 'TD 1.0'} report)"
    lines = [("TEE", kind), ("QE vendor id", d["qe_vendor_id"])]
    if d["version"] == 3:
        lines.append(("QE SVN / PCE SVN", f"{d['qe_svn']} / {d['pce_svn']}"))
    fmspc = f"{d['fmspc']} ({d['pck_ca']} CA)" if d["fmspc"] else "- (no readable PCK certificate)"
    lines.append(("FMSPC", fmspc))
    lines.append(("certification", f"type {d['certification_data_type']} ({d['certification_data']})"))
    if r["type"] == "SGX":
        names = ", ".join(r["attributes_flag_names"]) or "none"
        for k in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn"):
            lines.append((_LABELS[k], str(r[k])))
        lines.append(("attributes", f"flags {r['attributes_flags']} ({names}), xfrm {r['xfrm']}"))
        lines += [("MISCSELECT", r["misc_select"]), ("CPUSVN", r["cpu_svn"])]
        lines.append(("CONFIGSVN", str(r["config_svn"])))
    else:
        names = ", ".join(r["td_attribute_names"]) or "none"
        lines.append(("TD attributes", f"{r['td_attributes']} ({names})"))
        lines.append(("XFAM", r["xfam"]))
        lines.append(("TEE_TCB_SVN", r["tee_tcb_svn"]))
        for k in ("mr_seam", "mr_td", "mr_config_id", "mr_owner", "mr_owner_config",
                  "rtmr0", "rtmr1", "rtmr2", "rtmr3"):  # fmt: skip
            lines.append((_LABELS[k], r[k]))
        if "mr_service_td" in r:
            lines.append((_LABELS["mr_service_td"], r["mr_service_td"]))
    lines.append(("report data", r["report_data"]))
    if d["trailing_bytes"]:
        lines.append(("trailing bytes", f"{d['trailing_bytes']} (after the signature data, not signed)"))
    width = max(len(k) for k, _ in lines) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in lines)
