#!/usr/bin/env python
"""Create the virtual environments of the peer benchmark (issue 3 §7) under ``bench-out/peers/``.

KServe 0.21 and MLServer 1.7 pin protobuf < 7 and other versions that conflict with teeserve's own
dependencies, so each lives in its own venv, and so does the load generator (so that it is the same
tool, with the same libraries, for every server):

    bench-out/peers/kserve     kserve==0.21.0  + onnxruntime   (requirements-kserve.txt)
    bench-out/peers/mlserver   mlserver==1.7.1 + onnxruntime   (requirements-mlserver.txt)
    bench-out/peers/loadgen    grpcio + aiohttp + uvloop       (requirements-loadgen.txt)

Each venv is made only when missing or when its requirements/constraints files changed (a stamp file
holds their hash). ``constraints-NAME.txt`` (a ``pip freeze`` of a venv that worked) pins the whole tree
when present; ``--freeze`` rewrites them from the current venvs. pip installs from the registries
configured on the machine, nothing else.

Usage:  .venv/bin/python benchmarks/peers/setup_peers.py [--out bench-out/peers] [--only kserve,...]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENVS = ("kserve", "mlserver", "loadgen")


def venv_python(out: Path, name: str) -> Path:
    return out / name / "bin" / "python"


def _inputs(name: str) -> list[Path]:
    files = [HERE / f"requirements-{name}.txt"]
    cons = HERE / f"constraints-{name}.txt"
    if cons.exists():
        files.append(cons)
    return files


def _digest(name: str) -> str:
    h = hashlib.sha256(sys.version.encode())
    for f in _inputs(name):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def ensure(out: Path, name: str, quiet: bool = False) -> Path:
    """Make (or refresh) one venv; return its python."""
    env = out / name
    py = venv_python(out, name)
    stamp = env / ".teeserve-stamp"
    want = _digest(name)
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py
    t0 = time.monotonic()
    print(f"[setup] creating {env} (pip install -r {_inputs(name)[0].name}) ...", file=sys.stderr, flush=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    argv = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(_inputs(name)[0])]
    if len(_inputs(name)) > 1:
        argv += ["-c", str(_inputs(name)[1])]
    if quiet:
        argv.append("-q")
    log = env / "pip-install.log"
    with open(log, "wb") as fh:
        r = subprocess.run(argv, check=False, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"[setup] pip install failed for {name} (log: {log}):\n" + "\n".join(tail))
    stamp.write_text(want + "\n")
    print(f"[setup] {name} ready in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return py


def freeze(out: Path, name: str) -> None:
    py = venv_python(out, name)
    text = subprocess.run(
        [str(py), "-m", "pip", "freeze", "--all", "--exclude", "pip", "--exclude", "setuptools"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    dest = HERE / f"constraints-{name}.txt"
    dest.write_text(f"# pip freeze of bench-out/peers/{name} (made by setup_peers.py --freeze)\n" + text)
    print(f"[setup] wrote {dest.relative_to(ROOT)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "peers", help="where the venvs go")
    ap.add_argument("--only", default=",".join(ENVS), help="comma-separated subset of " + ",".join(ENVS))
    ap.add_argument("--freeze", action="store_true", help="write constraints-NAME.txt from the venvs")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in ENVS]
    if bad:
        ap.error(f"unknown venv name(s): {', '.join(bad)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for n in names:
        if args.freeze:
            freeze(args.out, n)
        else:
            print(ensure(args.out, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
