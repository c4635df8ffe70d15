"""A Predict for a fast model runs on the event loop itself; a slow model or a big request goes to the
inference pool (``_core.INLINE_RUN_S`` / ``INLINE_MAX_BYTES``, ``LoadedVersion.note_run``)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import pytest

from teeserve.serving import ModelRef
from teeserve.serving import _core
from teeserve.serving._manager import LoadedVersion


def _images(n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8), dtype=np.float32)


# --- the estimate (pure) -------------------------------------------------------------------------


def test_first_run_sets_the_estimate() -> None:
    v = LoadedVersion("m", 1)
    assert v.run_seconds == math.inf and v.estimate(100) == math.inf
    v.note_run(0.002, 1000, on_loop=False)
    assert v.run_seconds == 0.002 and v.run_seconds_per_byte == pytest.approx(2e-6)


def test_a_slower_run_on_the_loop_counts_at_once_a_faster_one_gradually() -> None:
    v = LoadedVersion("m", 1, run_seconds=0.0001, run_seconds_per_byte=1e-7)
    v.note_run(0.05, 1000, on_loop=True)
    assert v.run_seconds == 0.05  # the loop must not stall a second time
    v.note_run(0.0001, 1000, on_loop=True, weight=0.5)
    assert v.run_seconds == pytest.approx((0.05 + 0.0001) / 2)


def test_a_faster_run_on_a_worker_counts_at_once_a_slower_one_gradually() -> None:
    v = LoadedVersion("m", 1, run_seconds=0.004, run_seconds_per_byte=4e-6)
    v.note_run(0.008, 1000, on_loop=False, weight=0.25)  # may be a wait for the GIL, not the model
    assert v.run_seconds == pytest.approx(0.005)
    v.note_run(0.0001, 1000, on_loop=False)  # a fast run proves the model fast
    assert v.run_seconds == 0.0001


def test_the_estimate_scales_up_with_the_request_but_never_down() -> None:
    v = LoadedVersion("m", 1)
    v.note_run(0.0002, 256, on_loop=False)  # one row: 0.2 ms
    assert v.estimate(256) == pytest.approx(0.0002)
    assert v.estimate(64 * 256) == pytest.approx(64 * 0.0002)  # 64 rows: not a 0.2 ms guess
    assert v.estimate(16) == pytest.approx(0.0002)  # a fixed cost does not shrink with the input


# --- the core ------------------------------------------------------------------------------------


@pytest.fixture()
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(thread id, input bytes) of every servable run the core makes, in order."""
    seen: list[tuple[int, int]] = []
    real = _core._timed_run

    def spy(servable: Any, sig: str, inputs: Any, aliases: Any) -> Any:
        seen.append((threading.get_ident(), sum(a.nbytes for a in inputs.values())))
        return real(servable, sig, inputs, aliases)

    monkeypatch.setattr(_core, "_timed_run", spy)
    return seen


def _loop_ident(loop_thread: Any) -> int:
    return loop_thread.call(threading.get_ident)


def _on_the_loop(core: Any, loop_thread: Any, runs: list[tuple[int, int]]) -> int:
    """A few small Predicts, after which the digits model runs on the loop; the loop's thread id."""
    loop = _loop_ident(loop_thread)
    for i in range(4):
        loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(seed=i)}))
    assert runs[-1][0] == loop
    return loop


def _pretend_last_runs(core: Any, seconds: float, seconds_per_byte: float) -> None:
    with core._models["digits"].acquire(ModelRef("digits")) as entry:
        entry.run_seconds, entry.run_seconds_per_byte = seconds, seconds_per_byte


def test_a_fast_model_runs_on_the_loop_after_its_first_run(core: Any, loop_thread: Any,
                                                           runs: list[tuple[int, int]]) -> None:
    loop = _loop_ident(loop_thread)
    want = None
    for i in range(6):
        got = loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(seed=i)}))
        if i == 0:
            want = got
    assert runs[0][0] != loop, "the first run (no estimate yet) belongs on the pool"
    assert runs[-1][0] == loop, f"the digits model runs in well under {_core.INLINE_RUN_S * 1e3} ms"
    # same answers either way
    again = loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(seed=0)}))
    assert runs[-1][0] == loop
    assert want is not None
    for alias in want.outputs:
        np.testing.assert_array_equal(again.outputs[alias], want.outputs[alias])


def test_a_big_request_goes_to_the_pool_even_for_a_fast_model(core: Any, loop_thread: Any,
                                                              runs: list[tuple[int, int]]) -> None:
    loop = _on_the_loop(core, loop_thread, runs)
    big = _images(_core.INLINE_MAX_BYTES // (8 * 8 * 4) + 1)
    assert big.nbytes > _core.INLINE_MAX_BYTES
    loop_thread.run(core.predict(ModelRef("digits"), "", {"images": big}))
    assert runs[-1] != (loop, big.nbytes) and runs[-1][1] == big.nbytes


def test_a_model_that_turns_slow_goes_back_to_the_pool(core: Any, loop_thread: Any, runs: list[tuple[int, int]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loop = _on_the_loop(core, loop_thread, runs)
    spy = _core._timed_run
    slow_on_loop = 0

    def slow(servable: Any, sig: str, inputs: Any, aliases: Any) -> Any:
        nonlocal slow_on_loop
        if threading.get_ident() == loop:
            slow_on_loop += 1
        outputs, _ = spy(servable, sig, inputs, aliases)
        time.sleep(2 * _core.INLINE_RUN_S)
        return outputs, 2 * _core.INLINE_RUN_S

    monkeypatch.setattr(_core, "_timed_run", slow)
    for i in range(5):
        loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(seed=i)}))
    assert slow_on_loop == 1, "after one slow run on the loop, the model runs on the pool"
    assert all(ident != loop for ident, _ in runs[-4:])


def test_a_request_much_bigger_than_the_last_ones_goes_to_the_pool(core: Any, loop_thread: Any,
                                                                  runs: list[tuple[int, int]]) -> None:
    loop = _on_the_loop(core, loop_thread, runs)
    _pretend_last_runs(core, 1e-5, _core.INLINE_RUN_S / 1024)  # 1 KiB of input takes INLINE_RUN_S
    loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(8)}))  # 2 KiB
    assert runs[-1][0] != loop and runs[-1][1] == 8 * 256
    _pretend_last_runs(core, 1e-5, _core.INLINE_RUN_S / 1024)
    loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(1)}))  # 256 bytes
    assert runs[-1] == (loop, 256)


def test_with_batching_nothing_runs_on_the_loop(make_core: Any, onnx_model_dir: Any, loop_thread: Any,
                                                runs: list[tuple[int, int]]) -> None:
    core = make_core(onnx_model_dir, enable_batching=True)
    for i in range(4):
        loop_thread.run(core.predict(ModelRef("digits"), "", {"images": _images(seed=i)}))
    assert runs == [], "batched runs go through the batch scheduler, not _timed_run"
