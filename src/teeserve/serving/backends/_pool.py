"""The worker threads that run servables, off the event loop.

Strategy, both ways across the thread boundary:

- **Results back to the loop.** ``loop.run_in_executor`` wakes the event loop once per finished call
  (one self-pipe write and one epoll round each). With many small requests in flight that wake-up, not
  the model, is the cost: for the tiny test model it halves throughput. :class:`InferencePool` hands
  finished calls back in bursts instead: a worker appends its outcome to the loop's completion list and
  schedules a drain only if the list was empty, so one wake-up delivers every result that finished
  meanwhile.
- **Work to the threads.** A sleeping worker is woken through a pipe, not a futex (``queue.Queue``'s
  lock). Linux treats a pipe write as a *synchronous* wake-up (the waker is about to sleep, as the
  event loop is once it has handed a request over) and, when no core is idle, starts the worker on the
  waker's core. After a futex wake-up the worker often lands on a core still busy with another
  inference and waits there while the loop's core goes idle: ResNet-50 at concurrency 2 on 2 cores
  left the cores idle 4.2-5.0 % of the time that way, 3.3-3.7 % with the pipe (docs/serving.md).
  Only sleeping workers are sent a byte, so the pipe never holds more bytes than there are workers and
  a write never blocks the loop.

Runtimes (ONNX Runtime, TensorFlow) release the GIL while they compute, so the workers run in parallel.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["InferencePool"]

T = TypeVar("T")

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class InferencePool:
    """``threads`` daemon workers; :meth:`submit` is called on an event loop and returns its future."""

    def __init__(self, threads: int, name: str = "teeserve-infer") -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[_Item | None] = collections.deque()
        self._sleeping = 0  # workers blocked on the pipe (or about to be)
        self._tokens = 0  # bytes written to the pipe and not yet read
        self._wake_r = self._wake_w = -1  # the pipe is made with the threads, on the first call
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
            self._wake_r, self._wake_w = os.pipe()
            for t in self._threads:
                t.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._put((loop, fut, fn, args))
        return fut

    def _put(self, item: _Item | None) -> None:
        with self._lock:
            self._items.append(item)
            wake = self._sleeping > self._tokens
            if wake:
                self._tokens += 1
        if wake:
            os.write(self._wake_w, b"\0")

    def _take(self) -> _Item | None:
        """The next item, sleeping on the pipe while there is none."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                self._sleeping += 1
            os.read(self._wake_r, 1)
            with self._lock:
                self._sleeping -= 1
                self._tokens -= 1

    def _work(self) -> None:
        while True:
            item = self._take()
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
        if self._started:
            for _ in self._threads:
                self._put(None)
            for t in self._threads:
                t.join()
            os.close(self._wake_r)
            os.close(self._wake_w)
