"""The inference pool (``serving/backends/_pool.py``): results, errors, parallel workers, a burst far larger
than the wake-up pipe's capacity, shutdown."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest
import uvloop

from teeserve.serving.backends._pool import InferencePool, _Inbox

#: The server runs on uvloop by default (``--event-loop``); the pool must work on both.
LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])


@LOOPS
def test_results_and_exceptions_reach_the_awaiting_request(loop_factory: Any) -> None:
    pool = InferencePool(2)

    def boom() -> None:
        raise ValueError("model said no")

    async def main() -> None:
        assert await pool.submit(lambda a, b: a * b, 6, 7) == 42
        with pytest.raises(ValueError, match="model said no"):
            await pool.submit(boom)
        # many at once, each result to its own future
        assert await asyncio.gather(*(pool.submit(lambda i=i: i * i) for i in range(200))) == \
            [i * i for i in range(200)]

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
    finally:
        pool.shutdown()


def test_workers_run_in_parallel() -> None:
    """Three calls that each wait for the other two finish only if three workers run them at once."""
    pool = InferencePool(3)
    barrier = threading.Barrier(3, timeout=10)

    async def main() -> list[int]:
        return await asyncio.gather(*(pool.submit(barrier.wait) for _ in range(3)))

    try:
        assert sorted(asyncio.run(main())) == [0, 1, 2]  # Barrier.wait returns 0..parties-1
    finally:
        pool.shutdown()


def test_a_burst_larger_than_the_pipe_never_blocks_the_loop() -> None:
    """70,000 calls queued while every worker is busy: a byte per call would fill the 64 KiB wake-up pipe
    and block the event loop in write(); only sleeping workers are sent a byte."""
    pool = InferencePool(2)
    release = threading.Event()
    count = 0
    lock = threading.Lock()

    def hold() -> None:
        release.wait(120)  # longer than the join below: a blocked loop cannot pass by waiting it out

    def one() -> None:
        nonlocal count
        with lock:
            count += 1

    async def main() -> None:
        held = [pool.submit(hold) for _ in range(2)]
        burst = [pool.submit(one) for _ in range(70_000)]
        release.set()
        await asyncio.gather(*held, *burst)

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    runner.start()
    runner.join(30)
    try:
        assert not runner.is_alive(), "the event loop blocked while queueing the burst"
        assert count == 70_000
    finally:
        release.set()
        pool.shutdown()


def test_a_cancelled_request_is_skipped_and_the_pool_serves_on() -> None:
    pool = InferencePool(1)
    gate = threading.Event()

    async def main() -> int:
        slow = pool.submit(gate.wait, 10)
        slow.cancel()  # the client went away; the worker still finishes the call
        gate.set()
        return await pool.submit(lambda: 5)

    try:
        assert asyncio.run(main()) == 5
    finally:
        pool.shutdown()


def test_one_pool_serves_successive_event_loops() -> None:
    pool = InferencePool(2)
    try:
        for i in range(3):
            assert asyncio.run(_call(pool, i)) == i
    finally:
        pool.shutdown()


async def _call(pool: InferencePool, value: int) -> int:
    return await pool.submit(lambda: value)


def test_shutdown_finishes_queued_calls_then_releases_threads_and_pipe() -> None:
    pool = InferencePool(1)
    gate = threading.Event()
    done: list[int] = []

    async def main() -> None:
        pool.submit(gate.wait, 10)
        for i in range(5):
            pool.submit(done.append, i)

    asyncio.run(main())
    fds = (pool._queue._r, pool._queue._w)
    os.fstat(fds[0])  # open while the pool runs
    stopper = threading.Thread(target=pool.shutdown)
    stopper.start()
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert done == [0, 1, 2, 3, 4]
    assert not any(t.is_alive() for t in pool._threads)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(_call(pool, 1))
    pool.shutdown()  # twice is harmless


def test_an_unused_pool_starts_no_thread_and_opens_no_pipe() -> None:
    pool = InferencePool(4)
    pool.shutdown()
    assert not any(t.is_alive() for t in pool._threads)
    assert not pool._queue.opened


@LOOPS
def test_shutdown_while_the_loop_runs_still_delivers_finished_calls(loop_factory: Any) -> None:
    """ServingCore.stop() shuts the pool down from an executor thread while its loop runs: a result that
    came in around that moment still reaches its request, and the loop's reader and pipe go away."""
    pool = InferencePool(2)

    async def main() -> tuple[list[int], _Inbox]:
        loop = asyncio.get_running_loop()
        futs = [pool.submit(lambda i=i: i) for i in range(20)]
        inbox = pool._inboxes[loop]
        await loop.run_in_executor(None, pool.shutdown)
        results = await asyncio.wait_for(asyncio.gather(*futs), 10)
        await asyncio.sleep(0)  # the reader is removed by a callback on this loop
        return results, inbox

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        results, inbox = runner.run(main())
    assert results == list(range(20))
    assert inbox.closed
    for fd in (inbox.r, inbox.w):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_successive_event_loops_do_not_pile_up_pipes() -> None:
    pool = InferencePool(1)
    try:
        asyncio.run(_call(pool, 0))
        before = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            assert asyncio.run(_call(pool, i)) == i
        assert len(os.listdir("/proc/self/fd")) <= before + 2  # the last loop's inbox, at most
    finally:
        pool.shutdown()


def test_handoff_queue_is_fifo_and_wakes_only_sleepers() -> None:
    from teeserve.serving._handoff import HandoffQueue

    q: HandoffQueue[int] = HandoffQueue()
    q.open()
    try:
        for i in range(100_000):  # nobody sleeps: no byte is written, so this cannot fill the pipe
            q.put(i)
        assert q._tokens == 0
        assert [q.take() for _ in range(100_000)] == list(range(100_000))
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(q.take() for _ in range(3)))
        reader.start()
        for i in range(3):
            q.put(i)
        reader.join(10)
        assert not reader.is_alive() and got == [0, 1, 2]
    finally:
        q.close()
    assert not q.opened


def test_a_call_raising_stopiteration_fails_alone() -> None:
    """A Future refuses StopIteration (TypeError): the call gets a RuntimeError instead, and a result
    handed back in the same wake-up still reaches its request."""
    pool = InferencePool(2)

    def bad() -> None:
        raise StopIteration("an exhausted iterator inside a model")

    async def main() -> tuple[BaseException | None, Any]:
        gate = threading.Event()
        f1 = pool.submit(bad)
        time.sleep(0.2)  # the loop is busy: bad's outcome waits in the inbox
        f2 = pool.submit(lambda: (gate.wait(10), "ok")[1])
        gate.set()
        time.sleep(0.2)  # ...and good's joins it: one wake-up delivers both
        done, pending = await asyncio.wait([f1, f2], timeout=10)
        assert not pending
        return f1.exception(), f2.result()

    try:
        error, value = asyncio.run(main())
    finally:
        pool.shutdown()
    assert isinstance(error, RuntimeError) and isinstance(error.__cause__, StopIteration)
    assert value == "ok"


def test_calls_whose_request_is_gone_are_not_run() -> None:
    pool = InferencePool(1)
    gate = threading.Event()
    ran: list[int] = []

    async def main() -> None:
        blocker = pool.submit(gate.wait, 10)
        futs = [pool.submit(ran.append, i) for i in range(10)]
        for f in futs:
            f.cancel()  # the clients gave up (deadline, cancellation) while the calls waited
        gate.set()
        await blocker
        assert await pool.submit(lambda: "after") == "after"

    try:
        asyncio.run(main())
    finally:
        pool.shutdown()
    assert ran == []


def test_submit_is_atomic_with_shutdown() -> None:
    """shutdown() runs on another thread (ServingCore.stop); a submit that has passed the closed check
    must not be queued behind the workers' stop marks, where its future would never resolve. The
    thread switch is forced at the worst moment, just before the call is queued."""
    pool = InferencePool(2)

    async def main() -> Any:
        await pool.submit(lambda: 1)  # threads started
        queue = pool._queue
        real_put = queue.put
        stopper = threading.Thread(target=pool.shutdown)

        def switched_put(item: Any) -> None:
            queue.put = real_put  # type: ignore[method-assign]
            stopper.start()
            stopper.join(0.5)  # shutdown gets its chance to run first
            real_put(item)

        queue.put = switched_put  # type: ignore[method-assign]
        fut = pool.submit(lambda: "result")
        try:
            return await asyncio.wait_for(fut, 10)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, stopper.join, 30)

    assert asyncio.run(main()) == "result"
    assert pool._closed and not any(t.is_alive() for t in pool._threads)
