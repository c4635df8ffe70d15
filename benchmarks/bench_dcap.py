"""DCAP verification latency (p50/p99) with cached collateral, and simulated-quote verifications per second.

Measured side by side in one run:
  - dcap-qvl's ``verify`` alone on the shipped valid vectors (the floor),
  - teeserve's ``verify_evidence`` (parse + collateral lookup from memory + dcap-qvl), and the ratio,
  - teeserve's quote parser alone,
  - ``sim.verify_quote`` (SIMULATED quotes) per second, and its speed relative to DCAP,
  - ``Policy.evaluate`` per second.

Run: .venv/bin/python benchmarks/bench_dcap.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dcap_qvl

from teeserve.attest import Collateral, DictCollateralSource, load_policy, parse_quote, sim, verify_evidence
from teeserve.attest import decode_quote_bytes

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "dcap"


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def _timed(fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="verifications per vector (default 200)")
    args = ap.parse_args()

    valid = [e for e in json.loads((VECTORS / "manifest.json").read_text()) if e["expected"]["ok"]]
    cases = []
    for e in valid:
        raw = decode_quote_bytes((VECTORS / e["quote_file"]).read_bytes())
        coll = Collateral.from_file(VECTORS / e["collateral_file"])
        cases.append((e["id"], raw, coll, DictCollateralSource([coll]), e["now_secs"]))

    print(f"DCAP verification, {len(cases)} valid vectors x {args.rounds} rounds, collateral cached in memory")
    print(f"{'vector':28} {'dcap-qvl p50':>12} {'p99':>8} {'teeserve p50':>13} {'p99':>8} {'ratio':>6}")
    all_dcap: list[float] = []
    all_ts: list[float] = []
    all_parse: list[float] = []
    for name, raw, coll, src, now in cases:
        for _ in range(5):  # warm-up
            verify_evidence(raw, collateral=src, now=now)
        d = _timed(lambda: dcap_qvl.verify(raw, coll.dcap, now), args.rounds)
        t = _timed(lambda: verify_evidence(raw, collateral=src, now=now), args.rounds)
        all_parse += _timed(lambda: parse_quote(raw), args.rounds // 4 or 1)
        all_dcap += d
        all_ts += t
        p50d, p50t = statistics.median(d), statistics.median(t)
        print(f"{name:28} {p50d * 1e3:10.3f}ms {_pct(d, .99) * 1e3:6.3f}ms {p50t * 1e3:11.3f}ms "
              f"{_pct(t, .99) * 1e3:6.3f}ms {p50t / p50d:6.2f}")  # fmt: skip
    p50d, p50t = statistics.median(all_dcap), statistics.median(all_ts)
    print(f"{'ALL':28} {p50d * 1e3:10.3f}ms {_pct(all_dcap, .99) * 1e3:6.3f}ms {p50t * 1e3:11.3f}ms "
          f"{_pct(all_ts, .99) * 1e3:6.3f}ms {p50t / p50d:6.2f}")  # fmt: skip
    print(f"teeserve quote parse alone: p50 {statistics.median(all_parse) * 1e3:.3f}ms "
          f"(the PCK chain decode for the FMSPC is cached per chain)")
    dcap_per_s = 1 / p50t

    with tempfile.TemporaryDirectory() as tmp:
        key_path, pub_path = sim.init_key(tmp)
        key, pub = sim.load_signing_key(key_path), sim.load_public_key(pub_path)
        quotes = [sim.make_quote(key, i.to_bytes(8, "big"), mr_enclave=bytes(32)) for i in range(256)]
        import logging

        logging.getLogger("teeserve.attest.sim").setLevel(logging.ERROR)  # one warning per quote otherwise
        n = max(2000, args.rounds * 10)
        t0 = time.perf_counter()
        for i in range(n):
            verify_evidence(quotes[i % 256], collateral=None, sim_keys=[pub], now=0)
        sim_per_s = n / (time.perf_counter() - t0)
        print(f"\nSIMULATED quote verification: {sim_per_s:,.0f}/s "
              f"({sim_per_s / dcap_per_s:.1f}x the DCAP rate of {dcap_per_s:,.0f}/s at p50)")  # fmt: skip

        Path(tmp, "k").write_bytes(bytes(16))
        sgx = next(c for c in cases if c[0] == "automata-sgx-v3-platform")
        verified = verify_evidence(sgx[1], collateral=sgx[3], now=sgx[4])
        Path(tmp, "p.toml").write_text(
            'version = 1\n[secrets.k]\nfile = "k"\ntee = ["sgx"]\ntcb_statuses = ["SWHardeningNeeded"]\n'
            f'[[secrets.k.sgx]]\nmr_enclave = "{verified.quote.body.mr_enclave.hex()}"\n'
        )
        policy = load_policy(Path(tmp, "p.toml"))
        assert policy.evaluate(verified, "k", now=sgx[4]).accepted
        n = 20000
        t0 = time.perf_counter()
        for _ in range(n):
            policy.evaluate(verified, "k", now=sgx[4])
        ev_per_s = n / (time.perf_counter() - t0)
        print(f"Policy.evaluate: {ev_per_s:,.0f}/s ({ev_per_s / dcap_per_s:.0f}x the DCAP verification rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
