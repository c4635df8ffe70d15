"""``--event-loop``: uvloop by default, the stdlib loop on request, a clear error for what cannot be had."""

from __future__ import annotations

import asyncio
import sys
import warnings

import pytest

from teeserve._errors import UsageError
from teeserve.serving import _eventloop
from teeserve.serving._eventloop import loop_factory, loop_name, run


async def _running_loop_name() -> str:
    await asyncio.sleep(0)
    return loop_name(asyncio.get_running_loop())


@pytest.mark.parametrize("kind, expected", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_run_uses_the_loop_asked_for(kind: str, expected: str) -> None:
    assert run(_running_loop_name(), kind) == expected


def test_auto_falls_back_to_the_stdlib_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert run(_running_loop_name(), "auto") == "asyncio"


def test_auto_falls_back_when_uvloop_cannot_make_a_loop(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import uvloop

    def broken() -> asyncio.AbstractEventLoop:
        raise OSError(38, "Function not implemented")  # e.g. no eventfd in an old Gramine

    monkeypatch.setattr(uvloop, "new_event_loop", broken)
    assert run(_running_loop_name(), "auto") == "asyncio"
    assert "uvloop cannot make an event loop here (OSError" in caplog.text
    with pytest.raises(OSError):  # asked for by name: no silent fallback
        run(_running_loop_name(), "uvloop")


def test_the_uvloop_is_the_current_loop_as_with_asyncio_run() -> None:
    async def current_is_running() -> bool:
        return asyncio.get_event_loop() is asyncio.get_running_loop()

    assert run(current_is_running(), "uvloop")


def test_uvloop_asked_for_but_missing_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(UsageError, match="--event-loop uvloop: the uvloop package is not installed"):
        loop_factory("uvloop")


def test_unknown_kind_is_a_usage_error_and_the_coroutine_is_not_left_unawaited() -> None:
    coro = _running_loop_name()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be a RuntimeWarning
        with pytest.raises(UsageError, match="--event-loop: expected one of auto, uvloop, asyncio, got 'libev'"):
            run(coro, "libev")
    assert coro.cr_frame is None  # closed


def test_the_loop_is_closed_afterwards() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def grab() -> None:
        seen.append(asyncio.get_running_loop())

    run(grab(), "uvloop")
    assert seen and seen[0].is_closed()
    assert _eventloop.EVENT_LOOPS == ("auto", "uvloop", "asyncio")
