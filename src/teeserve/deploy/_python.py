"""The file layout of the Python interpreter an enclave runs: what the manifest must mount and trust.

Strategy: ask the *target* interpreter about itself (``python -I -c ...`` prints JSON), never the one
running teeserve and never Gramine's own ``python.*`` template helpers (those describe the Python that
runs ``gramine-manifest``, usually the distribution's, not the server's venv). A venv keeps its
``pyvenv.cfg`` next to ``bin/``; CPython finds it from ``argv[0]``, so the manifest runs the real
interpreter binary (``libos.entrypoint``) with ``argv[0]`` set to the venv's path.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ._errors import PythonLayoutError

__all__ = ["PythonLayout", "inspect_python"]

_PROBE = r"""
import json, os, sys, sysconfig
v = sysconfig.get_config_var
shared = None
if v("Py_ENABLE_SHARED") and v("LIBDIR") and v("INSTSONAME"):
    shared = os.path.join(v("LIBDIR"), v("INSTSONAME"))
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "stdlib": sysconfig.get_path("stdlib"),
    "dynload": v("DESTSHARED"),
    "purelib": sysconfig.get_path("purelib"),
    "platlib": sysconfig.get_path("platlib"),
    "shared_lib": shared,
    "multiarch": v("MULTIARCH") or "x86_64-linux-gnu",
}))
"""


@dataclass(frozen=True)
class PythonLayout:
    """Where an interpreter and its libraries live (absolute, normalized paths).

    ``argv0`` is the path the server is started by (a venv's ``bin/python3``); ``entrypoint`` is the real
    binary behind it; ``prefix`` is the venv (or the installation itself), ``stdlib``/``dynload`` are the
    base installation's standard library, ``site_packages`` the installed packages, ``shared_lib`` the
    ``libpython`` of a ``--enable-shared`` build (None for a static one, e.g. Debian's).
    """

    argv0: str
    entrypoint: str
    version: str
    prefix: str
    base_prefix: str
    stdlib: str
    dynload: str
    site_packages: tuple[str, ...]
    shared_lib: str | None = None
    multiarch: str = "x86_64-linux-gnu"

    @property
    def is_venv(self) -> bool:
        return self.prefix != self.base_prefix

    @property
    def argv0_is_symlink(self) -> bool:
        return self.argv0 != self.entrypoint


def inspect_python(python: str | os.PathLike[str], *, timeout: float = 30.0) -> PythonLayout:
    """Run ``python`` once to learn its layout.

    Raises:
        PythonLayoutError: not found, not executable, not a CPython that answers the probe.
    """
    path = Path(os.path.abspath(os.fspath(python)))
    if not path.exists():
        raise PythonLayoutError(f"--python {path}: no such file")
    try:
        out = subprocess.run(
            [os.fspath(path), "-I", "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout
        info = json.loads(out)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise PythonLayoutError(f"--python {path}: the interpreter failed: {last[0]}") from None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise PythonLayoutError(f"--python {path}: cannot run it as a Python interpreter: {exc}") from None
    sites = tuple(dict.fromkeys(os.path.normpath(p) for p in (info["purelib"], info["platlib"])))
    shared = info.get("shared_lib")
    return PythonLayout(
        argv0=os.path.normpath(path),
        entrypoint=os.path.realpath(path),
        version=info["version"],
        prefix=os.path.normpath(info["prefix"]),
        base_prefix=os.path.normpath(info["base_prefix"]),
        stdlib=os.path.normpath(info["stdlib"]),
        dynload=os.path.normpath(info["dynload"] or os.path.join(info["stdlib"], "lib-dynload")),
        site_packages=sites,
        shared_lib=os.path.realpath(shared) if shared else None,
        multiarch=info["multiarch"],
    )
