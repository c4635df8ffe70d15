"""The ``teeserve`` command: a thin shell over the library.

Strategy: each sub-command lives in its own ``_cmd_<name>.py`` module with a
``register(subparsers)`` function that adds its parser(s) and sets ``func`` to a callable taking the
parsed arguments. Modules are discovered by name, so adding a command never touches this file.
Command modules import heavy libraries (TensorFlow, gRPC, ...) inside their ``func`` only, so
``teeserve --help`` stays fast.

All error handling is here, in one place: a :class:`~teeserve.TeeserveError` prints one line naming
the problem and exits with its ``exit_code``; anything else is a bug and is reported as such without
a traceback unless ``TEESERVE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .._errors import TeeserveError

__all__ = ["main", "build_parser"]

_EPILOG = """\
roles:
  model owner     keys, encrypt, decrypt, certs, model, broker, attest
  TEE host        serve (with --tee gramine|tdx|sim), sim, gramine
  requester       client predict, client bench
  everything      demo (the whole flow on one machine with the simulated TEE)

Run 'teeserve COMMAND --help' for a command's options.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="teeserve",
        description="Confidential AI inference: encrypted models served from SGX/TDX enclaves "
        "with TensorFlow Serving's APIs, keys released only after remote attestation.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"teeserve {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_cmd_"):
            modules.append(importlib.import_module(f"{__name__}.{info.name}"))
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(subparsers)
    return parser


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that every ``finally`` and ``except
    BaseException`` runs: an interrupted write then removes its temporary file (which, for
    ``decrypt``, holds plaintext) instead of leaving it behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


def _terminate_by_exception() -> dict[int, Any]:
    """Commands that serve (``serve``, ``broker``) install their own handlers once they run; a signal
    that is ignored (``nohup``) stays ignored. Returns the handlers replaced, for main() to restore."""
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set them
        return replaced
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            replaced[sig] = signal.signal(sig, _raise_terminated)
    return replaced


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``teeserve`` console script. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    replaced = _terminate_by_exception()
    try:
        result = func(args)
    except TeeserveError as exc:
        print(f"teeserve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("teeserve: interrupted", file=sys.stderr)
        return 130
    except _Terminated as exc:
        print(f"teeserve: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        return 141
    except OSError as exc:  # the machine said no (a path, a permission, a full disk): not a bug of ours
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
        print(f"teeserve: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so plainly, keep the traceback for those who ask
        if os.environ.get("TEESERVE_DEBUG") == "1":
            raise
        print(
            f"teeserve: internal error: {type(exc).__name__}: {exc}\n"
            "  (this is a bug in teeserve; run with TEESERVE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70
    finally:
        for sig, handler in replaced.items():  # main() may be called from a program that goes on
            if signal.getsignal(sig) is _raise_terminated:
                signal.signal(sig, handler)
    return int(result or 0)
