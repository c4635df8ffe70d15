#!/usr/bin/env python3
"""Several replicas behind nginx (TLS passthrough) against one, and failover, measured in one run.

    .venv/bin/python benchmarks/bench_replicas.py [--replicas 3] [--cnum 8] [--seconds 10] [--plot out.png]

Starts the loopback topology of scripts/multi_replica.py (key broker, N replicas in the SIMULATED TEE,
each attesting and decrypting its model in memory, Debian's nginx as a layer-4 TLS-passthrough load
balancer) and runs `teeserve client bench` through nginx over mutual TLS:

1. throughput with nginx forwarding to all N replicas, then to one replica (same client, same model,
   same run, --seconds each): the ratio N/1. The client, nginx and the replicas share the machine's
   cores; one server process uses at most about one core, so on 2 cores N replicas can beat one;
2. failover: with the load running, one replica is SIGKILLed and restarted (it re-attests); failed
   requests against the in-flight bound of the killed replica (goal: not more), and the time until
   full throughput is back after the restarted replica is ready (goal: <= 5 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _multi_replica():
    spec = importlib.util.spec_from_file_location("multi_replica", REPO / "scripts" / "multi_replica.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["multi_replica"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--cnum", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="bench seconds per throughput measurement")
    p.add_argument("--failover-seconds", type=float, default=24.0)
    p.add_argument("--plot", metavar="PNG", help="throughput over time during the failover")
    args = p.parse_args()
    mr = _multi_replica()
    with tempfile.TemporaryDirectory(prefix="teeserve-bench-replicas-") as tmp:
        try:
            with mr.start_topology(Path(tmp), args.replicas) as topo:
                cmp = mr.compare(topo, cnum=args.cnum, duration=args.seconds)
                fo = mr.failover(topo, cnum=args.cnum, duration=args.failover_seconds,
                                 kill_at=min(10.0, args.failover_seconds / 3))
        except mr.SetupError as exc:
            print(f"bench_replicas: setup failed: {exc}", file=sys.stderr)
            return 2
    if args.plot:
        mr.plot(fo, args.plot)
    n = args.replicas
    print(f"replicas behind nginx (TLS passthrough, mutual TLS ends in each replica), -cnum {args.cnum}, "
          f"{args.seconds:.0f} s each, SIMULATED TEE, 2 cores shared by client, nginx and replicas")
    print(f"  {n} replicas: {cmp['all']['tps']:8.1f} req/s  p99 {cmp['all']['latency_ms']['p99']:.1f} ms  "
          f"errors {cmp['all']['errors'] or 0}")
    print(f"  1 replica : {cmp['one']['tps']:8.1f} req/s  p99 {cmp['one']['latency_ms']['p99']:.1f} ms  "
          f"errors {cmp['one']['errors'] or 0}")
    print(f"  ratio {n}/1 replicas: {cmp['ratio']:.2f}  (one server process uses at most about one core here)")
    print("failover (SIGKILL of one replica under load, restarted at once):")
    print(f"  failed requests {fo['failed_requests']} (errors {fo['errors'] or {}}), in-flight bound "
          f"{fo['in_flight_bound']}: {'OK' if fo['goal_failed_le_in_flight'] else 'MISSED'}")
    print(f"  restarted replica ready {fo['restart_ready_after_s']} s after the kill (re-attested), serving "
          f"{fo['restarted_replica_serving_after_ready_s']} s after ready")
    print(f"  total throughput back {fo['throughput_back_after_kill_s']} s after the kill; full throughput "
          f"{fo['full_throughput_after_ready_s']} s after the restarted replica was ready (goal <= 5 s): "
          f"{'OK' if fo['goal_full_throughput_within_5s'] else 'MISSED'}")
    print(f"  baseline {fo['baseline_tps']} req/s; last seconds by replica {fo['tail_tps_by_replica']}")
    return 0 if fo["goal_failed_le_in_flight"] and fo["goal_full_throughput_within_5s"] else 1


if __name__ == "__main__":
    sys.exit(main())
