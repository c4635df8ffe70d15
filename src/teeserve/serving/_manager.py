"""The lifecycle of one model's versions: discovery, policy, load, warmup, labels, hot swap, unload.

Strategy (TensorFlow Serving's "aspired versions" with its availability-preserving policy):

- ``sync()`` lists the numeric subdirectories of ``base_path``, lets the version policy pick the
  aspired set, **loads every new aspired version first** (START → LOADING → AVAILABLE, or END with
  an error status), and only then unloads versions that are no longer aspired, and only if an aspired
  version is AVAILABLE (or none is aspired any more): a version that fails to load never takes the
  serving one down with it.
- Requests hold a version through :meth:`ModelManager.acquire` (an in-flight count); unloading marks
  the version UNLOADING (so no new request resolves to it), waits until its in-flight count drains,
  then releases the runtime (END). Together this gives hot swaps with zero failed requests.
- Loading (file reads, decryption, session creation, warmup) runs in a worker thread. Failures are
  retried ``max_num_load_retries`` times, ``load_retry_interval_seconds`` apart, except permanent
  ones (a protected file that fails authentication, an invalid model): a retry cannot change them.
- When the server stops (:meth:`ModelManager.stop_loading`, :meth:`ModelManager.close`) loads in
  progress are abandoned rather than waited for: a warmup stops between its runs, and a servable
  that a loading thread still delivers is closed as it arrives (a thread cannot be interrupted).
- All mutable state is touched only on the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from ._batching import BatchQueue
from ._config import BatchingOptions, ConfigError, ModelConfig, ServingOptions, parse_batching_parameters
from ._secrets import FileReadError, KeyRing, ModelFiles
from ._types import Code, ModelRef, ServingError, VersionState, VersionStatus
from .backends import LoadError, Servable, load_servable

__all__ = ["ModelManager", "LoadedVersion", "label_error"]

log = logging.getLogger("teeserve.serving")

#: ``--enable_per_model_batching_parameters`` reads this file from each version directory.
BATCHING_PARAMS_FILE = "batching_params.pbtxt"


@dataclass(eq=False)
class LoadedVersion:
    """One version of a model and its state; ``servable`` is set while AVAILABLE/UNLOADING."""

    model: str
    number: int
    state: VersionState = VersionState.START
    error_code: Code = Code.OK
    error_message: str = ""
    servable: Servable | None = None
    inflight: int = 0
    drained: asyncio.Event | None = None
    drained_loop: asyncio.AbstractEventLoop | None = None
    batch_queues: dict[Any, BatchQueue] = field(default_factory=dict)
    batching: BatchingOptions | None = None  # this version's own batching_params.pbtxt, if any
    #: Estimates of this version's run time (seconds, and seconds per input byte; inf until the
    #: first run), which decide whether a Predict may run on the event loop (``_core.INLINE_RUN_S``).
    run_seconds: float = math.inf
    run_seconds_per_byte: float = math.inf

    def estimate(self, nbytes: int) -> float:
        """Expected run time for ``nbytes`` of inputs: never below the last runs' time (a fixed
        cost), and scaled up by size (a bigger batch of the same model takes longer)."""
        return max(self.run_seconds, self.run_seconds_per_byte * nbytes)

    def note_run(self, seconds: float, nbytes: int, *, on_loop: bool, weight: float = 0.1) -> None:
        """Update the estimates with one run's wall time and input size.

        A run on the loop measures the model alone: a slower one counts at once (the loop must not
        stall twice), faster ones pull the estimate down gradually. A run on a worker thread also
        includes the wait to get the GIL back from a busy loop, so there it is the other way round:
        a fast run proves the model fast at once, slow ones raise the estimate gradually.
        """
        self.run_seconds = _follow(self.run_seconds, seconds, on_loop, weight)
        self.run_seconds_per_byte = _follow(self.run_seconds_per_byte, seconds / max(nbytes, 1), on_loop, weight)

    def status(self) -> VersionStatus:
        return VersionStatus(self.number, self.state, self.error_code, self.error_message)


class _Hold:
    """:meth:`ModelManager.acquire`'s context manager: a class, not a generator, since it runs on every
    request (about 2 µs less per call)."""

    __slots__ = ("_manager", "_ref", "_entry")

    def __init__(self, manager: ModelManager, ref: ModelRef) -> None:
        self._manager = manager
        self._ref = ref

    def __enter__(self) -> LoadedVersion:
        m = self._manager
        with m._guard:  # resolve + count atomically: an unload cannot slip in between
            entry = m.resolve(self._ref)
            entry.inflight += 1
        self._entry = entry
        return entry

    def __exit__(self, *exc: object) -> None:
        entry = self._entry
        with self._manager._guard:
            entry.inflight -= 1
            drained = entry.drained if entry.inflight == 0 else None
        if drained is not None:
            _set_event(drained, entry.drained_loop)


def _follow(estimate: float, sample: float, on_loop: bool, weight: float) -> float:
    """One step of :meth:`LoadedVersion.note_run` for one estimate."""
    if estimate == math.inf or (sample > estimate) == on_loop:
        return sample
    return estimate + weight * (sample - estimate)


def _set_event(event: asyncio.Event, loop: asyncio.AbstractEventLoop | None) -> None:
    """Set an asyncio event from any thread (its loop's own thread included)."""
    if loop is None:
        event.set()
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        event.set()
    else:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _abandon(job: concurrent.futures.Future[Any], waiter: asyncio.Future[Any]) -> None:
    """Nobody awaits this load any more: close the servable it makes whenever it arrives."""
    job.cancel()  # a job no thread has taken yet never starts (the waiter's own cancel would reach
    # the job only on the loop's next turn, and a loading thread could take it meanwhile)
    if not waiter.done():
        waiter.cancel()
    elif not waiter.cancelled():
        waiter.exception()  # retrieved: no "exception was never retrieved" at garbage collection
    job.add_done_callback(_close_loaded)


def _close_loaded(job: concurrent.futures.Future[Any]) -> None:
    if job.cancelled() or job.exception() is not None:
        return
    servable, _ = job.result()
    try:
        servable.close()
    except Exception:  # a callback of the loading thread: log, never raise
        log.exception("closing an abandoned %s servable failed", servable.runtime)


def label_error(model: str, version: int) -> ServingError:
    return ServingError(Code.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {model}, which is not "
                        "currently available for inference")


def _not_found(ref: ModelRef, version: int | None = None) -> ServingError:
    v = ref.version if version is None else version
    what = f"Latest({ref.name})" if v is None else f"Specific({ref.name}, {v})"
    return ServingError(Code.NOT_FOUND, f"Servable not found for request: {what}")


class ModelManager:
    """Versions of one configured model."""

    def __init__(self, config: ModelConfig, options: ServingOptions, keyring: KeyRing, executor: Executor,
                 *, on_load: Callable[[str, str, float], None] | None = None,
                 on_warmup: Callable[[str, int, float], None] | None = None) -> None:
        self.config = config
        self.options = options
        self.keyring = keyring
        self.executor = executor
        self.versions: dict[int, LoadedVersion] = {}
        self.labels: dict[str, int] = {}
        self._lock = asyncio.Lock()
        # Requests may hold versions from gRPC's worker threads too (the blocking predict path):
        # taking and releasing a version, and the start of an unload, happen under this lock.
        self._guard = threading.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._on_load = on_load
        self._on_warmup = on_warmup  # (version path, records, seconds) after a warmup that succeeded
        self._closed = False
        #: Set by stop_loading() (and close()): no new loads, loads in progress are abandoned. A plain
        #: bool too, read by the loading thread (warmup checks it between runs).
        self._loading_stopped = False
        self._no_more_loads = asyncio.Event()
        self._warned_empty = False

    @property
    def name(self) -> str:
        return self.config.name

    # -- request side ---------------------------------------------------------------------------

    def available(self) -> list[int]:
        # tuple() copies the items atomically (under the GIL): request threads read while the loop loads.
        return sorted(v for v, e in tuple(self.versions.items()) if e.state == VersionState.AVAILABLE)

    def resolve(self, ref: ModelRef) -> LoadedVersion:
        """The AVAILABLE version a request means (latest, a number, or a label)."""
        version = ref.version
        if ref.label is not None:
            if ref.label not in self.labels:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {ref.label}")
            version = self.labels[ref.label]
        if version is None:
            # The highest AVAILABLE version (tuple() copies the items atomically, as in available()).
            latest = max((v for v, e in tuple(self.versions.items()) if e.state == VersionState.AVAILABLE),
                         default=None)
            if latest is None:
                raise _not_found(ref)
            return self.versions[latest]
        entry = self.versions.get(version)
        if entry is None or entry.state != VersionState.AVAILABLE:
            raise _not_found(ref, version)
        return entry

    def acquire(self, ref: ModelRef) -> _Hold:
        """Hold a version for the duration of one request (it will not be unloaded meanwhile):
        ``with manager.acquire(ref) as entry: ...``."""
        return _Hold(self, ref)

    def status(self, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        if not self.versions:
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {self.name}")
        if label is not None:
            if label not in self.labels:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is not None:
            entry = self.versions.get(version)
            if entry is None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {self.name}")
            return [entry.status()]
        return [self.versions[v].status() for v in sorted(self.versions, reverse=True)]

    # -- lifecycle --------------------------------------------------------------------------------

    def discover(self) -> list[int]:
        """Version numbers on disk: the all-digit subdirectories of ``base_path``."""
        try:
            names = os.listdir(self.config.base_path)
        except OSError:
            return []
        return sorted(int(n) for n in names
                      if n.isdigit() and os.path.isdir(os.path.join(self.config.base_path, n)))

    async def sync(self) -> None:
        """Bring the loaded versions in line with the policy and the directories on disk."""
        async with self._lock:
            if self._closed or self._loading_stopped:
                return
            on_disk = self.discover()
            if not on_disk and not self._warned_empty:
                log.warning("No versions of servable %s found under base path %s", self.name,
                            self.config.base_path)
            self._warned_empty = not on_disk  # once per empty spell, not at every poll
            aspired = self.config.version_policy.select(on_disk)
            to_load = sorted(v for v in aspired if v not in self.versions
                             or self.versions[v].state == VersionState.END and not self.versions[v].error_code)
            # Load new versions first (all of them, concurrently), then unload.
            await asyncio.gather(*(self._load(v) for v in to_load))
            stale = [v for v, e in self.versions.items()
                     if v not in aspired and e.state == VersionState.AVAILABLE]
            if stale and (any(self.versions[v].state == VersionState.AVAILABLE for v in aspired
                              if v in self.versions) or not aspired):
                await asyncio.gather(*(self._unload(self.versions[v]) for v in stale))

    async def _load(self, number: int) -> None:
        entry = LoadedVersion(self.name, number, VersionState.START)
        self.versions[number] = entry
        path = os.path.join(self.config.base_path, str(number))
        attempts = 1 + max(0, self.options.max_num_load_retries)
        for attempt in range(attempts):
            if self._loading_stopped:  # stopped before this load began (sync's tasks start later)
                break
            entry.state = VersionState.LOADING
            start = time.monotonic()
            try:
                loaded = await self._run_load(path)
            except LoadError as exc:
                if self._loading_stopped:  # the warmup saw the stop: not a failure of the model
                    break
                self._report_load(path, exc.code.name, time.monotonic() - start)
                log.warning("loading %s version %d failed (attempt %d of %d): %s", self.name, number,
                            attempt + 1, attempts, exc.message)
                entry.error_code, entry.error_message = exc.code, exc.message
                if exc.permanent or attempt + 1 == attempts:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._no_more_loads.wait(),
                                           self.options.load_retry_interval_seconds)
                if self._loading_stopped:
                    break
                continue
            except Exception as exc:  # a bug in a backend: keep serving the other versions
                self._report_load(path, Code.INTERNAL.name, time.monotonic() - start)
                log.exception("loading %s version %d crashed", self.name, number)
                entry.error_code, entry.error_message = Code.INTERNAL, f"{path}: {type(exc).__name__}: {exc}"
                break
            if loaded is None:  # abandoned: the server is stopping
                break
            servable, batching = loaded
            self._report_load(path, "success", time.monotonic() - start)
            if self._loading_stopped:
                servable.close()
                break
            entry.servable = servable
            entry.batching = batching
            entry.error_code, entry.error_message = Code.OK, ""
            entry.state = VersionState.AVAILABLE
            log.info("model %s version %d is AVAILABLE (%s)", self.name, number, servable.runtime)
            return
        if self._loading_stopped and entry.error_code == Code.OK:
            entry.error_code, entry.error_message = Code.CANCELLED, "loading stopped: the server is stopping"
        entry.state = VersionState.END

    async def _run_load(self, path: str) -> tuple[Servable, BatchingOptions | None] | None:
        """:meth:`_load_blocking` in the load executor; None when loading stops meanwhile.

        Why not just await it: a stop must not wait for a load (a large model, a long warmup) whose
        servable would never serve. The thread cannot be interrupted, so what it still delivers is
        closed on arrival, also when this task is cancelled."""
        job = self.executor.submit(self._load_blocking, path)
        waiter = asyncio.wrap_future(job)
        stopped = asyncio.ensure_future(self._no_more_loads.wait())
        try:
            await asyncio.wait((waiter, stopped), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled
            _abandon(job, waiter)
            raise
        finally:
            stopped.cancel()
        if not waiter.done():
            _abandon(job, waiter)
            return None
        return waiter.result()

    def _report_load(self, path: str, status: str, seconds: float) -> None:
        if self._on_load is not None:
            self._on_load(path, status, seconds)

    def _load_blocking(self, path: str) -> tuple[Servable, BatchingOptions | None]:
        if self._loading_stopped:  # taken by a thread after the stop: read, decrypt, build nothing
            raise LoadError(Code.CANCELLED, f"{path}: loading stopped: the server is stopping", permanent=True)
        key_name = dict(self.options.model_keys).get(self.config.name, self.options.key_name)
        files = ModelFiles(path, self.keyring, key_name=key_name, path_map=self.options.path_map,
                           require_encrypted=self.options.require_encrypted_models)
        batching = None
        if self.options.enable_batching and self.options.enable_per_model_batching_parameters \
                and files.exists(BATCHING_PARAMS_FILE):
            try:
                batching = parse_batching_parameters(files.read(BATCHING_PARAMS_FILE),
                                                     files.path(BATCHING_PARAMS_FILE))
            except FileReadError as exc:
                raise LoadError(Code.DATA_LOSS if exc.permanent else Code.UNAVAILABLE, str(exc),
                                permanent=exc.permanent) from exc
            except ConfigError as exc:
                raise LoadError(Code.INVALID_ARGUMENT, str(exc), permanent=True) from exc
        servable = load_servable(files, self.options)
        if self._loading_stopped:
            servable.close()
            raise LoadError(Code.CANCELLED, f"{path}: loading stopped: the server is stopping",
                            permanent=True)
        if self.options.enable_model_warmup:
            from ._warmup import WARMUP_FILE, run_warmup

            if files.exists(WARMUP_FILE):
                try:
                    data = files.read(WARMUP_FILE)
                except FileReadError as exc:
                    servable.close()
                    raise LoadError(Code.DATA_LOSS if exc.permanent else Code.UNAVAILABLE, str(exc),
                                    permanent=exc.permanent) from exc
                warmup_start = time.perf_counter()
                try:
                    n = run_warmup(servable, data, files.path(WARMUP_FILE),
                                   self.options.num_request_iterations_for_warmup,
                                   check_method=self.options.enable_signature_method_name_check,
                                   should_stop=lambda: self._loading_stopped)
                except LoadError:
                    servable.close()
                    raise
                if self._on_warmup is not None:
                    self._on_warmup(path, n, time.perf_counter() - warmup_start)
                log.info("warmed up %s from %d records", path, n)
        return servable, batching

    async def _unload(self, entry: LoadedVersion) -> None:
        with self._guard:
            entry.state = VersionState.UNLOADING
            if entry.inflight:
                entry.drained = asyncio.Event()
                entry.drained_loop = asyncio.get_running_loop()
        if entry.drained is not None:
            await entry.drained.wait()
        for q in entry.batch_queues.values():
            q.close()
        entry.batch_queues.clear()
        if entry.servable is not None:
            servable, entry.servable = entry.servable, None
            await asyncio.get_running_loop().run_in_executor(self.executor, servable.close)
        entry.state = VersionState.END
        log.info("model %s version %d unloaded", self.name, entry.number)

    def check_labels(self, labels: dict[str, int], *, allow_unavailable: bool) -> ServingError | None:
        """Validate a label map against the AVAILABLE versions (TF Serving's rule)."""
        for label, version in sorted(labels.items()):
            entry = self.versions.get(version)
            if entry is not None and entry.state == VersionState.AVAILABLE:
                continue
            is_new = label not in self.labels
            if allow_unavailable and is_new:
                continue
            return label_error(self.name, version)
        return None

    def start_polling(self) -> None:
        wait = self.options.file_system_poll_wait_seconds
        if wait > 0 and self._poll_task is None and not self._closed and not self._loading_stopped:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll(wait))

    async def _poll(self, wait: float) -> None:
        while not self._closed:
            await asyncio.sleep(wait)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - polling must survive a bad moment on the file system
                log.exception("polling %s failed", self.config.base_path)

    def stop_loading(self) -> None:
        """No more loads, and loads in progress are abandoned (the server is stopping: what they
        would load would never serve); the AVAILABLE versions keep serving until :meth:`close`."""
        self._loading_stopped = True
        self._no_more_loads.set()

    async def close(self) -> None:
        """Stop polling and loading, unload every version (draining in-flight requests)."""
        self._closed = True
        self.stop_loading()
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        async with self._lock:
            await asyncio.gather(*(self._unload(e) for e in self.versions.values()
                                   if e.state in (VersionState.AVAILABLE, VersionState.UNLOADING)))
