"""``teeserve attest``: look inside a quote, and verify one the way the key broker does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .._errors import UsageError

ORDER = 45

_DESCRIPTION = """\
Operator tools for SGX/TDX DCAP quotes and SIMULATED quotes. QUOTE may be a binary quote, a hex text
quote, or an RA-TLS certificate (PEM or DER) whose quote is extracted.

  show     print the quote's fields (no verification)
  verify   verify it as the key broker would: DCAP signatures and collateral (dcap-qvl), TCB status,
           then, with --policy and --secret, every rule of that secret's policy
"""

_VERIFY_EPILOG = """\
exit status: 0 accepted; 1 not trusted (verification or collateral failed); 3 trusted but denied by
the policy; 4 the policy has no such secret; 2 usage or policy-file error.

Without --policy only the quote itself is judged: it must verify and its TCB status must be UpToDate
(identity is NOT checked). SIMULATED quotes need --sim-key (or the policy's trusted keys).

examples:
  teeserve attest verify quote.dat --collateral collateral.json --now 1755236700
  teeserve attest verify ratls-cert.pem --pccs-url https://pccs.example:8081 --pccs-ca pccs-ca.pem \\
      --policy policy.toml --secret model-key
  teeserve attest verify sim-quote.bin --sim-key sim/sim_attest_key.pub.pem --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "attest",
        help="show or verify a quote (SGX/TDX DCAP, SIMULATED, or inside an RA-TLS certificate)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(title="attest commands", metavar="SUBCOMMAND")

    s = sub.add_parser(
        "show", help="print a quote's fields", description="Print a quote's fields (not verified)."
    )
    s.add_argument("quote", metavar="QUOTE", help="quote file (binary or hex) or RA-TLS certificate")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_show)

    v = sub.add_parser(
        "verify",
        help="verify a quote and apply a policy",
        description="Verify a quote the way the key broker does, and print the TCB status, the advisories "
        "and the policy verdict with every failed rule.",
        epilog=_VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("quote", metavar="QUOTE", help="quote file (binary or hex) or RA-TLS certificate")
    src = v.add_mutually_exclusive_group()
    src.add_argument(
        "--collateral", metavar="PATH", help="collateral JSON file, or a directory of them (offline)"
    )
    src.add_argument("--pccs-url", metavar="URL", help="PCCS (or Intel PCS) base URL, https only")
    v.add_argument(
        "--pccs-ca", metavar="FILE",
        help="PEM CA the PCCS TLS certificate must chain to (replaces the system store)",
    )  # fmt: skip
    v.add_argument(
        "--cache-dir", metavar="DIR",
        help="collateral cache for --pccs-url (default: $XDG_CACHE_HOME/teeserve/collateral)",
    )  # fmt: skip
    v.add_argument("--policy", metavar="FILE", help="policy TOML (or the reference ra_config.json)")
    v.add_argument("--secret", metavar="NAME", help="the secret whose policy applies (with --policy)")
    v.add_argument("--sim-key", action="append", default=[], metavar="PUB",
                   help="trusted simulation public key (repeatable)")  # fmt: skip
    v.add_argument("--report-data", metavar="HEX", help="require this report data (up to 64 bytes, hex)")
    v.add_argument("--now", type=int, metavar="UNIX_SECONDS", help="verification time (default: now)")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.set_defaults(func=_verify)


def load_quote_file(path: str) -> bytes:
    """Raw quote bytes from a binary/hex quote file or an RA-TLS certificate (PEM/DER)."""
    from ..attest import decode_quote_bytes

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    if not data.strip():
        raise UsageError(f"{path}: empty file")
    decoded = decode_quote_bytes(data)  # hex text → bytes; anything else unchanged
    if decoded is data and (data.lstrip().startswith(b"-----BEGIN") or data[:1] == b"\x30"):
        # PEM, or DER (a SEQUENCE; a binary quote starts with its version 03/04/05 instead)
        from ..attest import ratls

        return ratls.extract_quote(data)
    return decoded


def _show(args: argparse.Namespace) -> int:
    from ..attest import describe_quote, format_quote, parse_quote

    quote = parse_quote(load_quote_file(args.quote))
    if args.json:
        print(json.dumps(describe_quote(quote), indent=2))
    else:
        print(format_quote(quote))
    return 0


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "teeserve" / "collateral"


def _verify(args: argparse.Namespace) -> int:
    import time

    from .. import attest
    from ..attest import sim

    if (args.policy is None) != (args.secret is None):
        raise UsageError("--policy and --secret go together")
    if args.pccs_ca and not args.pccs_url:
        raise UsageError("--pccs-ca needs --pccs-url")
    if args.cache_dir and not args.pccs_url:
        raise UsageError("--cache-dir needs --pccs-url")
    expected_rd = None
    if args.report_data is not None:
        try:
            expected_rd = bytes.fromhex(args.report_data)
        except ValueError as exc:
            raise UsageError("--report-data: not hex") from exc
        if len(expected_rd) > 64:
            raise UsageError("--report-data: at most 64 bytes")
    now = args.now if args.now is not None else int(time.time())

    policy = attest.load_policy(args.policy) if args.policy else None  # config errors: fail before anything
    if policy is not None:
        policy.secret(args.secret)  # UnknownSecret → exit 4
    sim_keys = [sim.load_public_key(k) for k in args.sim_key] + list(policy.sim_keys if policy else ())
    source: Any = None
    if args.collateral:
        source = attest.FileCollateralSource(args.collateral)
    elif args.pccs_url:
        client = attest.PccsClient(args.pccs_url, ca_file=args.pccs_ca)
        source = attest.CachingCollateralSource(client, args.cache_dir or _default_cache_dir())

    raw = load_quote_file(args.quote)
    quote = attest.parse_quote(raw)
    report: dict[str, Any] = {"quote": attest.describe_quote(quote), "now": now}
    try:
        verified = attest.verify_evidence(raw, collateral=source, sim_keys=sim_keys, now=now)
    except (attest.QuoteVerificationFailed, attest.CollateralError) as exc:
        report.update(verified=False, error=str(exc), error_type=type(exc).__name__, accepted=False)
        _print(report, args.json)
        return 1
    report["verified"] = True
    report.update(attest.describe_verified(verified))
    if policy is not None:
        verdict = policy.evaluate(verified, args.secret, now=now, report_data=expected_rd)
        report["policy"] = {"file": args.policy, **attest.describe_verdict(verdict)}
        report["accepted"] = verdict.accepted
    else:
        baseline = []
        if verified.tcb_status != "UpToDate":
            baseline.append({"rule": "tcb_status", "expected": ["UpToDate"], "actual": verified.tcb_status})
        if expected_rd is not None and quote.report_data != expected_rd.ljust(64, b"\0"):
            baseline.append({"rule": "report_data", "expected": expected_rd.ljust(64, b"\0").hex(),
                             "actual": quote.report_data.hex()})  # fmt: skip
        report["policy"] = {"file": None, "accepted": not baseline, "violations": baseline,
                            "note": "no policy given: identity not checked"}  # fmt: skip
        report["accepted"] = not baseline
    _print(report, args.json)
    return 0 if report["accepted"] else 3


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    q = report["quote"]
    sim_mark = " SIMULATED" if q["simulated"] else ""
    r = q["report"]
    ident = (f"MRENCLAVE {r['mr_enclave']}, MRSIGNER {r['mr_signer']}, ISV_PROD_ID {r['isv_prod_id']}, "
             f"ISV_SVN {r['isv_svn']}") if r["type"] == "SGX" else f"MRTD {r['mr_td']}"  # fmt: skip
    tee = "sim (SIMULATED)" if q["simulated"] else q["tee"]
    out = [f"quote:       {tee} v{q['version']}, FMSPC {q['fmspc'] or '-'}", f"identity:    {ident}"]
    if not report["verified"]:
        out.append(f"verified:    NO: {report['error']}")
        out.append("verdict:     NOT TRUSTED")
        print("\n".join(out))
        return
    adv = ", ".join(report["advisory_ids"]) or "none"
    out.append(f"verified:    yes{' (SIMULATED: no hardware TEE)' if report['simulated'] else ''}")
    out.append(f"TCB status:  {report['tcb_status']}")
    out.append(f"advisories:  {adv}")
    if report["collateral_expiry"] is not None:
        out.append(f"collateral:  valid until {report['collateral_expiry_utc']}")
    pol = report["policy"]
    if pol.get("file"):
        out.append(f"policy:      {pol['file']}, secret {pol['secret']!r}")
    else:
        out.append(f"policy:      none ({pol['note']}; TCB status must be UpToDate)")
    for v in pol["violations"]:
        out.append(f"  FAILED {v['rule']}: expected {v['expected']}, got {v['actual']}")
    out.append(f"verdict:     {'ACCEPTED' if report['accepted'] else 'DENIED'}{sim_mark}")
    print("\n".join(out))
    sys.stdout.flush()
