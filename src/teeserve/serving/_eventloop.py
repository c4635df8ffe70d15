"""Which asyncio event loop the server runs on (``teeserve serve --event-loop``).

uvloop (libuv underneath, the event loop that uvicorn and most fast Python servers use) is the default:
the REST front end is an ``asyncio.Protocol`` whose cost per small request is mostly the loop's own
work (selector, socket calls, callbacks), and uvloop does that work in C. Measured here on the digits
model with h2load, the server's CPU per REST request was about 12 % lower than on the stdlib loop (8 of
9 alternating runs; ``docs/serving.md``). The stdlib loop stays one flag away (``--event-loop asyncio``)
for debugging, and ``auto`` falls back to it where uvloop cannot be imported or cannot make a loop
(a warning says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .._errors import UsageError

__all__ = ["EVENT_LOOPS", "loop_factory", "run", "loop_name"]

T = TypeVar("T")

log = logging.getLogger("teeserve.serving")

#: The values of ``--event-loop``.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A function that makes a new event loop of ``kind`` (one of :data:`EVENT_LOOPS`); ``None`` for
    the stdlib's own (``asyncio.Runner`` then behaves exactly as ``asyncio.run``)."""
    if kind not in EVENT_LOOPS:
        raise UsageError(f"--event-loop: expected one of {', '.join(EVENT_LOOPS)}, got {kind!r}")
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise UsageError("--event-loop uvloop: the uvloop package is not installed "
                             "(pip install uvloop, or use --event-loop asyncio)") from None
        return None
    if kind == "auto":
        # libuv needs what an old or restricted runtime may lack (eventfd, e.g. Gramine before 1.7):
        # auto means "uvloop if it works here", so try it once.
        try:
            uvloop.new_event_loop().close()
        except Exception as exc:
            log.warning("uvloop cannot make an event loop here (%s: %s): using the asyncio loop",
                        type(exc).__name__, exc)
            return None

    def new_uvloop() -> asyncio.AbstractEventLoop:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)  # as asyncio.run does, for code that asks for the current loop
        return loop

    return new_uvloop


def run(main: Coroutine[Any, Any, T], kind: str) -> T:
    """``asyncio.run(main)`` on a loop of ``kind``."""
    runner = None
    try:
        runner = asyncio.Runner(loop_factory=loop_factory(kind))
        runner.get_loop()  # made now: if that fails, main was never started
    except BaseException:
        main.close()  # no "coroutine was never awaited" warning
        if runner is not None:
            runner.close()
        raise
    with runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a log line or a test reports."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
