"""Build and run ``grpc_loadgen`` (``grpc_loadgen.cc``), the benchmarks' C++ gRPC load generator.

The benchmarks put the load generator on the same two cores as the server they measure, so every
microsecond the generator spends is one the server lacks. grpc.aio clients cost 300-450 us of CPU per
small call here; this tool, on gRPC's own C++ library, about 170 us, and it still checks every call's
gRPC status (which h2load cannot see). Built on first use with g++ against Debian's ``libgrpc++-dev``
(``scripts/bootstrap.sh`` installs it), rebuilt when the source changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("grpc_loadgen.cc")
APT_HINT = "apt-get install g++ pkg-config libgrpc++-dev"


class BuildError(RuntimeError):
    """The tool cannot be built here (missing compiler or library, or a compile error)."""


def ensure_built(out_dir: Path) -> Path:
    """The path of a ``grpc_loadgen`` built from the current source, compiling it into ``out_dir`` if needed.

    The binary's name carries a hash of the source, the compiler's and gRPC's versions, so an edited
    source or an upgraded library is never run as an old binary.
    """
    for tool in ("g++", "pkg-config"):
        if not shutil.which(tool):
            raise BuildError(f"{tool} not found; install the build dependencies: {APT_HINT}")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True)
    version = subprocess.run(["pkg-config", "--modversion", "grpc++"], capture_output=True, text=True)
    if flags.returncode != 0 or version.returncode != 0:
        raise BuildError(f"gRPC's C++ library not found by pkg-config ({flags.stderr.strip()}); {APT_HINT}")
    compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout
    key = SOURCE.read_bytes() + version.stdout.encode() + compiler.encode()
    exe = Path(out_dir) / f"grpc_loadgen-{hashlib.sha256(key).hexdigest()[:12]}"
    if exe.is_file():
        return exe
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two builds at once (two benchmarks) never write the same file.
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=exe.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    argv = ["g++", "-O2", "-std=c++17", "-Wall", "-o", str(tmp), str(SOURCE), *flags.stdout.split(),
            "-labsl_synchronization"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"compiling {SOURCE.name} failed:\n{done.stderr[-4000:]}")
        tmp.replace(exe)  # atomic: a concurrent or interrupted build never leaves a half-written binary
    finally:
        tmp.unlink(missing_ok=True)
    return exe


def run(exe: Path, *, target: str, method: str, request: Path, concurrency: int, threads: int,
        duration: float, warmup: float, startup: float = 1.0, t0: float = 0.0, timeout: float = 30.0,
        tls: dict[str, str] | None = None, server_name: str | None = None) -> dict[str, Any]:
    """One closed-loop run; the tool's JSON report (loadgen.py's fields, plus ``warmup_requests``)."""
    argv = [str(exe), "--target", target, "--method", method, "--request", str(request),
            "--concurrency", str(concurrency), "--threads", str(threads), "--duration", f"{duration:g}",
            "--warmup", f"{warmup:g}", "--startup", f"{startup:g}", "--timeout", f"{timeout:g}"]
    if t0:
        argv += ["--t0", repr(t0)]
    if tls:
        argv += ["--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"]]
    if server_name:
        argv += ["--server-name", server_name]
    done = subprocess.run(argv, capture_output=True, text=True,
                          timeout=startup + warmup + duration + 5 + 90)  # --drain 5 bounds the tail
    if done.returncode != 0:
        raise RuntimeError(f"grpc_loadgen failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
