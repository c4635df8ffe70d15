"""``teeserve broker``: the attestation-gated key broker, and ``teeserve broker audit``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

from .._errors import UsageError

ORDER = 50

_DESCRIPTION = """\
Run the key broker: a Gramine-compatible secret-provisioning server (TLS with an ordinary certificate)
that releases a secret only to a client whose RA-TLS certificate carries a quote that is bound to its
TLS key, verifies (Intel DCAP with collateral, or SIMULATED only where the policy allows it) and
satisfies the policy's rules for that secret. A refused client learns nothing (the session is
closed); the reason, with every failed rule, goes to the log and the hash-chained audit.

Gramine enclaves (libsecret_prov_attest.so) get the policy's default secret (the secret named
'default', or --default-secret NAME). teeserve clients may ask for more secrets by name on the same
session (see docs/broker.md). The policy is reloaded on SIGHUP and when the file changes; a bad new
policy is rejected and the previous one stays in force.
"""

_EPILOG = """\
examples:
  teeserve broker --policy policy.toml --listen 0.0.0.0:4433 --cert broker.pem --key broker.key \\
      --pccs-url https://pccs.example:8081 --audit audit.db --metrics-listen 127.0.0.1:9464
  teeserve broker --policy ra_config.json --listen 0.0.0.0:4433 --cert broker.pem --key broker.key \\
      --collateral collateral/            # offline; ra_config.json releases ./wrap_key as 'default'
  teeserve broker audit --audit audit.db --verify --tail 20
"""

_AUDIT_EPILOG = """\
exit status: 0 the chain verifies (or was not checked); 1 the chain is broken (a row edited, removed or
reordered, or the head is not --expect-head); 2 usage error.
"""


def _hostport(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{flag}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "broker",
        help="run the attestation-gated key broker (and 'broker audit')",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", metavar="FILE",
                   help="policy TOML (docs/policy.md) or the reference ra_config.json")  # fmt: skip
    p.add_argument("--listen", metavar="HOST:PORT", default="0.0.0.0:4433",
                   help="where to listen (default 0.0.0.0:4433, Gramine's port)")  # fmt: skip
    p.add_argument("--cert", metavar="FILE", help="the broker's TLS certificate (chain), PEM")
    p.add_argument("--key", metavar="FILE", help="the broker's TLS private key, PEM")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--collateral", action="append", default=[], metavar="FILE",
                     help="offline DCAP collateral JSON file or directory (repeatable)")  # fmt: skip
    src.add_argument("--pccs-url", metavar="URL", help="PCCS (or Intel PCS) base URL, https only")
    p.add_argument("--pccs-ca", metavar="FILE", help="PEM CA of the PCCS's TLS certificate")
    p.add_argument(
        "--cache-dir", metavar="DIR",
        help="collateral cache for --pccs-url (default $XDG_CACHE_HOME/teeserve/collateral)",
    )  # fmt: skip
    p.add_argument("--audit", metavar="FILE", default="audit.db", help="audit database (default ./audit.db)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics")
    p.add_argument("--max-clients", type=int, default=64, metavar="N",
                   help="sessions served at once (default 64)")  # fmt: skip
    p.add_argument("--max-clients-per-address", type=int, default=0, metavar="N",
                   help="sessions served at once for one client address; more are closed before TLS, so "
                        "one host cannot hold every slot (default 0: no limit, as TEEs behind one NAT or a "
                        "proxy share an address)")  # fmt: skip
    p.add_argument("--rate", type=float, default=2.0, metavar="R",
                   help="attempts per second allowed per client address (default 2)")  # fmt: skip
    p.add_argument("--burst", type=int, default=10, metavar="B",
                   help="burst of attempts per address (default 10)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds for a TLS handshake, and for each request (default 10)")  # fmt: skip
    p.add_argument("--default-secret", default="default", metavar="NAME",
                   help="the secret sent to every attested client first (default 'default')")  # fmt: skip
    p.add_argument(
        "--secret-file", metavar="FILE",
        help="with an ra_config.json policy: the wrap-key file (default wrap_key next to it)",
    )  # fmt: skip
    p.add_argument("--reload-interval", type=float, default=2.0, metavar="S",
                   help="how often the policy file is checked for changes (default 2 s)")  # fmt: skip
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=_run)

    sub = p.add_subparsers(title="broker commands", metavar="SUBCOMMAND")
    a = sub.add_parser(
        "audit",
        help="print and check the hash-chained audit",
        description="Print the broker's audit (every attempt: time, peer, TEE kind, measurements, TCB status "
        "and advisories, rule matched, secret, released or reason denied) and check its hash chain.",
        epilog=_AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--audit", metavar="FILE", required=True, help="audit database")
    a.add_argument("--verify", action="store_true", help="check the hash chain (exit 1 when broken)")
    a.add_argument("--expect-head", metavar="HASH", help="with --verify: the head hash recorded elsewhere")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.add_argument("--tail", type=int, metavar="N", help="print only the last N rows")
    a.set_defaults(func=_audit)


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "teeserve", "collateral")


def _collateral(args: argparse.Namespace) -> Any:
    from .. import attest
    from ..broker import MultiCollateralSource

    if args.pccs_ca and not args.pccs_url:
        raise UsageError("--pccs-ca needs --pccs-url")
    if args.cache_dir and not args.pccs_url:
        raise UsageError("--cache-dir needs --pccs-url")
    if args.collateral:
        sources = [attest.FileCollateralSource(p) for p in args.collateral]
        return sources[0] if len(sources) == 1 else MultiCollateralSource(sources)
    if args.pccs_url:
        client = attest.PccsClient(args.pccs_url, ca_file=args.pccs_ca)
        return attest.CachingCollateralSource(client, args.cache_dir or _default_cache_dir())
    return None


def _run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..broker import AuditLog, BrokerMetrics, KeyBroker, PolicyHolder, RateLimiter

    missing = [f for f, v in (("--policy", args.policy), ("--cert", args.cert), ("--key", args.key)) if not v]
    if missing:
        raise UsageError(f"teeserve broker needs {', '.join(missing)} (or the 'audit' subcommand)")
    host, port = _hostport(args.listen, "--listen")
    if args.max_clients < 1:
        raise UsageError("--max-clients must be at least 1")
    if args.max_clients_per_address < 0:
        raise UsageError("--max-clients-per-address must be 0 (no limit) or positive")
    import math

    if not (math.isfinite(args.rate) and args.rate > 0) or args.burst < 1:
        raise UsageError(f"--rate must be a finite number > 0 (got {args.rate:g}) and --burst >= 1")
    for flag, value in (("--timeout", args.timeout), ("--reload-interval", args.reload_interval)):
        if not (math.isfinite(value) and value > 0):  # nan/inf would switch the limit off or spin
            raise UsageError(f"{flag} must be a finite number of seconds > 0, got {value:g}")
    _setup_logging(args.log_level)
    log = logging.getLogger("teeserve.broker")

    collateral = _collateral(args)  # collateral/PCCS errors: fail before listening
    metrics = BrokerMetrics()
    holder = PolicyHolder(
        args.policy, default_secret=args.default_secret, have_collateral=collateral is not None,
        secret_file=args.secret_file, on_reload=metrics.on_reload,
    )  # fmt: skip
    audit = AuditLog(args.audit)
    limiter = RateLimiter(args.rate, args.burst)
    broker = KeyBroker(holder, collateral=collateral, audit=audit, rate_limiter=limiter, metrics=metrics)
    server = broker.server(host, port, args.cert, args.key, max_clients=args.max_clients,
                           max_per_address=args.max_clients_per_address, timeout=args.timeout)  # fmt: skip
    if args.metrics_listen:
        m_host, m_port = _hostport(args.metrics_listen, "--metrics-listen")
        try:
            metrics.serve(m_host, m_port)
        except OSError as exc:
            raise UsageError(f"--metrics-listen {args.metrics_listen}: {exc.strerror or exc}") from exc
    stop = threading.Event()  # handlers before listening: SIGHUP's default action would end the process
    signal.signal(signal.SIGHUP, lambda *_: holder.request_reload())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    policy = holder.policy
    sim_note = ""
    if policy.sim_keys:
        sim_note = " SIMULATED quotes are accepted for some secrets (trusted simulation keys)"
    log.info(
        "key broker listening on %s:%d (policy %s, generation 1, secrets: %s; default secret %r; "
        "audit %s).%s",
        host, server.port, args.policy, ", ".join(sorted(policy.secrets)), holder.default_secret, args.audit,
        sim_note,
    )  # fmt: skip

    holder.start_watching(args.reload_interval)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("key broker stopping")
        server.stop()
        holder.stop()
        metrics.stop()
        audit.close()
    return 0


def _utc(ts: object) -> str:
    """A row's time; a value that is no timestamp (an edited row) is shown as it is, marked."""
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return f"(unreadable time {ts!r})"


def _audit(args: argparse.Namespace) -> int:
    from ..broker import AuditChainBroken, AuditLog

    if not os.path.isfile(args.audit):
        raise UsageError(f"{args.audit}: no such audit database")
    if args.expect_head and not args.verify:
        raise UsageError("--expect-head needs --verify")
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail must be >= 0")
    log = AuditLog(args.audit)
    try:
        rows = list(log.rows())
        if args.tail is not None:
            rows = rows[-args.tail :] if args.tail else []
        head = log.head()
        check: dict[str, Any] | None = None
        if args.verify:
            try:
                count = log.verify(expect_head=args.expect_head)
                check = {"ok": True, "rows": count, "head": head}
            except AuditChainBroken as exc:
                check = {"ok": False, "error": str(exc), "row": exc.seq}
    finally:
        log.close()
    if args.json:
        print(json.dumps({"rows": rows, "head": head, "verify": check}, indent=2))
    else:
        for r in rows:
            meas = r["measurements"]
            ident = " ".join(f"{k}={v}" for k, v in meas.items() if k != "verified")
            if meas and not meas.get("verified", True):
                ident += " (unverified)"
            what = "RELEASED" if r["decision"] == "released" else "DENIED"
            adv = ",".join(r["advisories"]) or "-"
            print(f"#{r['seq']} {_utc(r['time'])} {r['peer']} {what} secret={r['secret']} tee={r['tee']} "
                  f"tcb={r['tcb_status']} advisories={adv} rule={r['rule']} {ident}".rstrip())  # fmt: skip
            if r["decision"] != "released":
                print(f"    reason: {r['reason']}")
        if check is not None:
            if check["ok"]:
                print(f"audit chain OK: {check['rows']} rows, head {check['head']}")
            else:
                print(f"audit chain BROKEN: {check['error']}", file=sys.stderr)
    return 0 if check is None or check["ok"] else 1
