"""The worker threads that run servables, off the event loop.

Strategy: every hand-off across the thread boundary goes through a pipe, and as few as possible.

- **Results back to the loop.** ``loop.run_in_executor`` wakes the event loop once per finished call.
  With many small requests in flight that wake-up, not the model, is the cost: for the tiny test model
  it halves throughput. :class:`InferencePool` hands finished calls back in bursts instead: a worker
  appends its outcome to the loop's inbox and writes to the inbox's pipe only if the inbox was empty, so
  one wake-up delivers every result that finished meanwhile.
- **Work to the threads.** A sleeping worker is woken through a pipe as well, not a futex
  (``queue.Queue``'s lock): :class:`~teeserve.serving._handoff.HandoffQueue`, which sends a byte only
  to sleeping workers, so the pipe never fills and a write never blocks the loop.
- **Why pipes.** Linux takes a pipe write as a *synchronous* wake-up (the waker is about to sleep: the
  loop once it has handed a request over, a worker once it has handed a result back) and, when no core
  is idle, starts the woken thread on the waker's core. After a futex or eventfd wake-up (uvloop's
  ``call_soon_threadsafe``) the thread often lands on a core still busy with another inference and
  waits there while the waker's core goes idle. ResNet-50 at concurrency 2 on 2 cores left the cores
  idle 4.3-5.7 % of the time with the futex and the eventfd, 1.7-3.5 % with the two pipes (6 alternating
  rounds, docs/serving.md).

Runtimes (ONNX Runtime, TensorFlow) release the GIL while they compute, so the workers run in parallel.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .._handoff import HandoffQueue

__all__ = ["InferencePool"]

T = TypeVar("T")


class _Inbox:
    """Finished calls waiting for one event loop, and the pipe that wakes it (its reader is registered
    with the loop)."""

    __slots__ = ("loop", "items", "r", "w", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.closed = False

    def close(self) -> None:
        """Called with the pool's lock held: once ``closed`` is set no worker writes to the pipe, so its
        descriptors (which the process may reuse at once) can go. The reader is removed on the loop's
        own thread, since an event loop's registrations are not thread-safe."""
        if self.closed:
            return
        self.closed = True
        loop = self.loop
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop.is_running() and current is not loop:
            try:
                loop.call_soon_threadsafe(self._release)
                return
            except RuntimeError:  # closed meanwhile
                pass
        self._release()

    def _release(self) -> None:
        """On the loop's thread (or with the loop stopped): results that came in before the close still
        reach their requests."""
        items, self.items = self.items, []
        try:
            if not self.loop.is_closed():
                self.loop.remove_reader(self.r)
                _deliver(items)
        finally:
            os.close(self.r)
            os.close(self.w)


def _deliver(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Resolve each future (every outcome is one a Future takes: see the StopIteration in _work)."""
    for fut, ok, value in items:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


_Item = tuple[_Inbox, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class InferencePool:
    """``threads`` daemon workers; :meth:`submit` is called on an event loop and returns its future."""

    def __init__(self, threads: int, name: str = "teeserve-infer") -> None:
        self._lock = threading.Lock()
        self._queue: HandoffQueue[_Item | None] = HandoffQueue()  # its pipe is made on the first call
        self._inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, threads))]
        self._started = False
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._open_inbox(loop)
        fut: asyncio.Future[T] = loop.create_future()
        with self._lock:  # atomic with shutdown(): no call can slip in behind the workers' stop marks
            if self._closed:
                raise RuntimeError("the inference pool is shut down")
            if not self._started:  # threads start with the first call, so an unused core costs none
                self._started = True
                self._queue.open()
                for t in self._threads:
                    t.start()
            self._queue.put((inbox, fut, fn, args))
        return fut

    def _open_inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        inbox = _Inbox(loop)
        loop.add_reader(inbox.r, self._drain, inbox)
        with self._lock:
            if self._closed:  # shut down meanwhile: nothing may use (or leak) this pipe
                inbox.close()
                raise RuntimeError("the inference pool is shut down")
            for old in [i for i in self._inboxes.values() if i.loop.is_closed()]:
                del self._inboxes[old.loop]
                old.close()
            self._inboxes[loop] = inbox
        return inbox

    def _work(self) -> None:
        while True:
            item = self._queue.take()
            if item is None:
                return
            inbox, fut, fn, args = item
            if fut.cancelled():  # its request is gone (client cancelled, deadline, shutdown): skip the work
                del item, fn, args
                continue
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except StopIteration as exc:  # a Future refuses it: wrapped, as asyncio does for coroutines
                error = RuntimeError("the call raised StopIteration")
                error.__cause__ = exc
                outcome = (False, error)
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting request
                outcome = (False, exc)
            del item, fn, args
            with self._lock:
                if inbox.closed:
                    continue
                if inbox.loop.is_closed():  # nobody is waiting any more
                    self._inboxes.pop(inbox.loop, None)
                    inbox.close()
                    continue
                inbox.items.append((fut, *outcome))
                if len(inbox.items) == 1:  # else a wake-up is already pending and takes this one too
                    os.write(inbox.w, b"\0")  # at most a byte or two are ever unread: never blocks

    def _drain(self, inbox: _Inbox) -> None:
        with self._lock:
            if inbox.closed:
                return
            try:
                os.read(inbox.r, 4096)
            except BlockingIOError:  # a wake-up whose results an earlier drain already took
                pass
            items, inbox.items = inbox.items, []
        _deliver(items)

    def shutdown(self) -> None:
        """Let queued calls finish, then stop the workers (blocking)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._started:  # set only under the lock, so it cannot change from here on
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join()
            self._queue.close()
        with self._lock:
            for inbox in self._inboxes.values():
                inbox.close()
            self._inboxes.clear()
