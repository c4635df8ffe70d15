"""Handing work to sleeping threads through a pipe, not a futex.

Linux takes a pipe write as a *synchronous* wake-up (the waker is about to sleep) and, when no core is
idle, starts the woken thread on the waker's core. After a futex wake-up (``queue.Queue``,
``threading.Condition``, ``concurrent.futures.ThreadPoolExecutor``) the thread often lands on a core
still busy with other work and waits there while the waker's core goes idle. The measurements are in
docs/serving.md ("Serving benchmark").

:class:`HandoffQueue` is the inference pool's FIFO (``backends/_pool.py``). Only sleeping threads are
sent a byte, so the pipe never holds more bytes than there are threads and a ``put`` never blocks.
(The same queue under gRPC's thread-pool server, as its executor, was slower: 1,900 against 2,208
req/s with two workers on the digits model, 5 alternating rounds; the calls there are short and the
cores rarely idle, so where a woken thread starts matters less than the pipe's two system calls.)
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Generic, TypeVar

__all__ = ["HandoffQueue"]

T = TypeVar("T")


class HandoffQueue(Generic[T]):
    """A FIFO whose readers sleep on a pipe. :meth:`open` before use, :meth:`close` once no thread
    calls :meth:`take` any more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[T] = collections.deque()
        self._sleeping = 0  # threads blocked on the pipe (or about to be)
        self._tokens = 0  # bytes written to the pipe and not yet read
        self._r = self._w = -1

    @property
    def opened(self) -> bool:
        return self._w >= 0

    def open(self) -> None:
        self._r, self._w = os.pipe()

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._sleeping > self._tokens:
                self._tokens += 1
                # under the lock, so that close() can never race a write to a closed (reused) descriptor
                os.write(self._w, b"\0")

    def take(self) -> T:
        """The next item, sleeping on the pipe while there is none."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                self._sleeping += 1
            os.read(self._r, 1)
            with self._lock:
                self._sleeping -= 1
                self._tokens -= 1

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._r)
                os.close(self._w)
                self._r = self._w = -1
