"""Server-side batching with TensorFlow Serving's ``BatchingParameters`` semantics.

Strategy (all state lives on the event loop thread, so there are no locks):

- A :class:`BatchScheduler` is shared by every model (TF Serving's shared batch scheduler): it owns
  ``num_batch_threads`` execution slots; a batch runs in the core's worker threads (``submit``) only
  while it holds a slot.
- Each (servable version, signature, input layout) gets a :class:`BatchQueue`. Requests join the
  *open* batch while it has room (``max_batch_size`` rows in total); a request that does not fit
  closes it and starts a new one. The open batch is ready when it is full, when
  ``batch_timeout_micros`` has passed since its first request, or at once when the timeout is 0 (so
  with idle slots a lone request is never delayed, and under load requests pile up into batches).
- ``max_enqueued_batches`` bounds the batches waiting in a queue (the open one included); a request
  that would need one more is rejected with UNAVAILABLE, TF Serving's words.
- A batch's inputs are concatenated along dimension 0 and padded up to the next
  ``allowed_batch_sizes`` entry by repeating the first row; each request gets a *view* of its rows of
  every output (no copy).

Only requests whose inputs all have the batch on dimension 0 (signature dim 0 = -1) are batched;
the core runs the others directly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._config import BatchingOptions
from ._types import Code, ServingError

__all__ = ["BatchScheduler", "BatchQueue", "QUEUE_FULL_MESSAGE"]

QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"

RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


@dataclass(slots=True)
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: asyncio.Future[dict[str, np.ndarray]]


@dataclass(slots=True)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    opened: float = 0.0
    timed_out: bool = False


class BatchScheduler:
    """The shared pool of batch execution slots (``num_batch_threads``)."""

    def __init__(self, options: BatchingOptions, submit: Callable[..., Awaitable[Any]],
                 on_batch: Callable[[str, int, int, float], None] | None = None) -> None:
        self.options = options
        self.submit = submit  # runs fn(*args) off the event loop
        self._free = options.num_batch_threads
        self._waiting: collections.deque[BatchQueue] = collections.deque()
        self._on_batch = on_batch

    def queue(self, name: str, run: RunFn, output_aliases: list[str],
              options: BatchingOptions | None = None) -> BatchQueue:
        """A queue with the shared slots and ``options`` (default: the scheduler's own)."""
        return BatchQueue(self, name, run, output_aliases, options)

    def _try_acquire(self) -> bool:
        if self._free > 0:
            self._free -= 1
            return True
        return False

    def _release(self) -> None:
        self._free += 1
        while self._free > 0 and self._waiting:
            q = self._waiting.popleft()
            q._waiting = False
            q._dispatch()


class BatchQueue:
    """The batches of one servable signature with one input layout and output selection."""

    def __init__(self, scheduler: BatchScheduler, name: str, run: RunFn, output_aliases: list[str],
                 options: BatchingOptions | None = None) -> None:
        self._sched = scheduler
        self._opts = options or scheduler.options
        self.name = name
        self._run = run
        self._aliases = output_aliases
        self._open: _Batch | None = None
        self._closed: collections.deque[_Batch] = collections.deque()
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enqueued_batches(self) -> int:
        return len(self._closed) + (1 if self._open is not None else 0)

    def submit(self, inputs: dict[str, np.ndarray], size: int) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue one request of ``size`` rows; the future resolves to its outputs."""
        opts = self._opts
        if size > opts.max_batch_size:
            raise ServingError(Code.INVALID_ARGUMENT, f"Task size {size} is larger than maximum input batch "
                                                      f"size {opts.max_batch_size}")
        loop = asyncio.get_running_loop()
        if self._open is not None and self._open.size + size > opts.max_batch_size:
            # TF Serving's rule: the task needs a new batch; if the queue holds max_enqueued_batches
            # (the open one counted), it is refused and the open batch stays open for smaller tasks
            if self.enqueued_batches >= opts.max_enqueued_batches:
                raise ServingError(Code.UNAVAILABLE, QUEUE_FULL_MESSAGE)
            self._closed.append(self._open)
            self._open = None
        if self._open is None:
            if self.enqueued_batches >= opts.max_enqueued_batches:
                raise ServingError(Code.UNAVAILABLE, QUEUE_FULL_MESSAGE)
            self._open = _Batch(opened=time.monotonic())
            if opts.batch_timeout_micros > 0:
                batch = self._open
                self._timer = loop.call_later(opts.batch_timeout_micros / 1e6, self._on_timeout, batch)
        task = _Task(inputs, size, loop.create_future())
        self._open.tasks.append(task)
        self._open.size += size
        if self._open.size >= opts.max_batch_size:
            self._closed.append(self._open)
            self._open = None
        self._dispatch()
        return task.future

    def _on_timeout(self, batch: _Batch) -> None:
        batch.timed_out = True
        self._dispatch()

    def _ready_open(self) -> bool:
        b = self._open
        return b is not None and (self._opts.batch_timeout_micros == 0 or b.timed_out)

    def _dispatch(self) -> None:
        while self._closed or self._ready_open():
            if not self._sched._try_acquire():
                if not self._waiting:
                    self._waiting = True
                    self._sched._waiting.append(self)
                return
            if self._closed:
                batch = self._closed.popleft()
            else:
                batch, self._open = self._open, None  # type: ignore[assignment]
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: _Batch) -> None:
        try:
            tasks = [t for t in batch.tasks if not t.future.cancelled()]
            if not tasks:
                return
            padded = self._opts.padded_size(sum(t.size for t in tasks))
            queued = time.monotonic() - batch.opened
            try:
                outputs = await self._sched.submit(self._run_merged, tasks, padded)
            except BaseException as exc:  # noqa: BLE001 - every task gets the batch's failure
                for t in tasks:
                    if not t.future.done():
                        t.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            start = 0
            for t in tasks:
                if not t.future.done():
                    t.future.set_result({a: v[start:start + t.size] for a, v in outputs.items()})
                start += t.size
            if self._sched._on_batch is not None:
                self._sched._on_batch(self.name, start, padded, queued)
        finally:
            self._sched._release()

    def _run_merged(self, tasks: list[_Task], padded: int) -> dict[str, np.ndarray]:
        total = sum(t.size for t in tasks)
        if len(tasks) == 1 and padded == total:
            merged = tasks[0].inputs
        else:
            merged = {}
            for alias in tasks[0].inputs:
                parts = [t.inputs[alias] for t in tasks]
                if padded > total:
                    first = parts[0][:1]
                    parts.append(np.broadcast_to(first, (padded - total,) + first.shape[1:]))
                merged[alias] = np.concatenate(parts, axis=0)
        outputs = self._run(merged, self._aliases)
        for alias, v in outputs.items():
            if np.ndim(v) == 0 or v.shape[0] != padded:
                raise ServingError(Code.FAILED_PRECONDITION,
                                   f"Batched output tensor's 0th dimension does not equal the sum of the 0th "
                                   f"dimension sizes of the input tensors (output {alias})")
        return outputs

    def close(self) -> None:
        """Fail requests still waiting (the version is being unloaded after its drain)."""
        if self._timer is not None:
            self._timer.cancel()
        pending = list(self._closed) + ([self._open] if self._open else [])
        self._closed.clear()
        self._open = None
        for b in pending:
            for t in b.tasks:
                if not t.future.done():
                    t.future.set_exception(ServingError(Code.UNAVAILABLE, "the servable was unloaded"))


def batch_key(signature_name: str, inputs: dict[str, np.ndarray], output_aliases: list[str]) -> Any:
    """Requests may share a batch only if all of this matches (names, dtypes, non-batch dims)."""
    return (signature_name, tuple(output_aliases),
            tuple((a, v.dtype.str, v.shape[1:]) for a, v in sorted(inputs.items())))
