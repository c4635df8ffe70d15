#!/usr/bin/env python3
"""Protected-file throughput next to the raw AES-128-GCM it is built on, measured side by side.

    .venv/bin/python benchmarks/bench_pf.py [--size-mb 100] [--repeat 3]

Encrypts a random file of --size-mb MB (in a temporary directory) with ``pf.encrypt_file`` and
decrypts it with ``pf.decrypt_file`` (file to file, fsync included) and with
``Reader.read_all`` (in memory), best of --repeat interleaved rounds. The same bytes are then sealed with
``cryptography``'s AESGCM, once in 4096-byte calls under one key (what a node-per-call design
could at most reach), in 4096-byte calls with a fresh key per node (what this format needs: every
node has its own key, and constructing ``AESGCM`` costs about as much as sealing 4 KiB), and once in
a single call into a preallocated buffer (the machine's limit).
Goals (2-core machine): decrypt >= 300 MB/s and >= 0.5 x raw, encrypt >= 150 MB/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from teeserve import pf

IV = bytes(12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mb * 1_000_000
    key = pf.new_wrap_key()
    with tempfile.TemporaryDirectory(prefix="bench_pf.") as tmp:
        plain, enc, dec = Path(tmp, "plain.bin"), Path(tmp, "enc.bin"), Path(tmp, "dec.bin")
        data = os.urandom(size)
        plain.write_bytes(data)

        def encrypt() -> None:
            pf.encrypt_file(plain, enc, key, overwrite=True)

        def decrypt() -> None:
            pf.decrypt_file(enc, dec, key, overwrite=True)

        def read_all() -> None:
            with pf.open_reader(enc, key) as r:
                r.read_all()

        view = memoryview(data)
        nodes = [view[i : i + 4096] for i in range(0, size - 4095, 4096)]
        slot = bytearray(4096 + 16)
        aead = AESGCM(key)

        def raw_nodes() -> None:
            for node in nodes:
                aead.encrypt_into(IV, node, None, slot)

        node_keys = [os.urandom(16) for _ in nodes]

        def raw_rekeyed() -> None:  # what the format needs: a fresh AESGCM per node key
            for k, node in zip(node_keys, nodes):
                AESGCM(k).encrypt_into(IV, node, None, slot)

        big = bytearray(size + 16)
        aead.encrypt_into(IV, data, None, big)  # fault the pages in once

        def raw_one() -> None:
            aead.encrypt_into(IV, data, None, big)

        # Interleaved rounds, best of each: the machine may be shared, so every contender sees
        # the same background load.
        cases = {
            "enc": encrypt, "dec": decrypt, "mem": read_all,
            "nodes": raw_nodes, "one": raw_one, "rekeyed": raw_rekeyed,
        }
        times = {name: float("inf") for name in cases}
        for _ in range(args.repeat):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name] = min(times[name], time.perf_counter() - t0)
        scale = size / (4096 * len(nodes))  # the raw node loops cover whole nodes only
        times["nodes"] *= scale
        times["rekeyed"] *= scale
        if dec.read_bytes() != data:
            print("decrypted output differs from the plaintext", file=sys.stderr)
            return 1

    mb = size / 1e6
    rate = {k: mb / t for k, t in times.items()}
    print(f"protected files, {mb:.0f} MB random file, best of {args.repeat} interleaved rounds (MB = 1e6 B)")
    rows = [
        ("raw AES-128-GCM, 4096-byte calls, one key", "nodes", None),
        ("raw AES-128-GCM, 4096-byte calls, new key each (bound)", "rekeyed", None),
        ("raw AES-128-GCM, one call (the limit)", "one", None),
        ("pf.encrypt_file (file -> file, fsync)", "enc", 150),
        ("pf.decrypt_file (file -> file, fsync)", "dec", 300),
        ("Reader.read_all (file -> bytes)", "mem", 300),
    ]
    for label, k, goal in rows:
        line = f"  {label:<56s} {rate[k]:7.0f} MB/s"
        if goal is not None:
            line += (
                f"  x{rate[k] / rate['nodes']:.2f} of 4096-byte calls, x{rate[k] / rate['rekeyed']:.2f} of "
                f"the bound, x{rate[k] / rate['one']:.2f} of the limit  (goal >= {goal} MB/s)"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
