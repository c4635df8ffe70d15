"""The worker threads that run servables, off the event loop.

Strategy: ``loop.run_in_executor`` wakes the event loop once per finished call (one self-pipe write
and one epoll round each). With many small requests in flight that wake-up, not the model, is the
cost: for the tiny test model it halves throughput. :class:`InferencePool` hands finished calls back
in bursts instead: a worker appends its outcome to the loop's completion list and schedules a drain
only if the list was empty, so one wake-up delivers every result that finished meanwhile. Runtimes
(ONNX Runtime, TensorFlow) release the GIL while they compute, so the workers run in parallel.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["InferencePool"]

T = TypeVar("T")


class InferencePool:
    """``threads`` daemon workers; :meth:`submit` is called on an event loop and returns its future."""

    def __init__(self, threads: int, name: str = "teeserve-infer") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, threads))]
        self._started = False
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("the inference pool is shut down")
        if not self._started:  # threads start with the first call, so an unused core costs none
            self._started = True
            for t in self._threads:
                t.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting request
                outcome = (False, exc)
            del item, fn, args
            with self._lock:
                box = self._done.setdefault(loop, [])
                box.append((fut, *outcome))
                if len(box) > 1:
                    continue  # a drain is already scheduled and will take this one too
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:  # the loop is closed; nobody is waiting any more
                with self._lock:
                    self._done.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            items = self._done.pop(loop, [])
        for fut, ok, value in items:
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self) -> None:
        """Let queued calls finish, then stop the workers (blocking)."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
