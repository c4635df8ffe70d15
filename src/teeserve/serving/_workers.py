"""``teeserve serve --workers N``: one supervisor, N serving processes on the same ports.

Why: one CPython process executes Python on one core at a time (the GIL), and for small models the
per-request work of gRPC and HTTP is Python work, so one process tops out at about one core however
many the host has. TensorFlow Serving uses every core; ``--workers`` is how teeserve does.

The **supervisor** (this module, the process ``teeserve serve`` started):

1. reserves the gRPC and REST ports with ``SO_REUSEPORT`` (a bound socket that never listens, so a
   port already taken fails before anything else happens);
2. obtains the keys once (``--wrap-key`` and/or remote attestation to the key broker: one attestation,
   one audit entry, however many workers);
3. makes a private 0700 directory for the workers' shared Prometheus metrics
   (``PROMETHEUS_MULTIPROC_DIR``), removed at exit; each worker's files are named after its slot
   (``counter_worker2.db``), so a restarted worker counts on in its predecessor's files;
4. starts N workers (multiprocessing's *spawn*: fresh interpreters, no state forked from the
   supervisor) and hands each its options and the keys over its pipe: never a file, the command line
   or the environment;
5. then supervises: a worker that dies after it was up is restarted (1 s, doubling to 30 s, back to
   1 s after a minute of good service; a restart that fails is retried the same way); a worker that
   fails at the first start (bad TLS material, a port it cannot bind, model loading that raised) stops
   them all and the supervisor exits with that worker's status and message, as a single process
   would; a HandleReloadConfigRequest that one worker applied is relayed to the others, and the
   worker that got it answers only once every serving worker has applied it (as with TF Serving, a
   model the reload added is then there on every connection); the latest one is handed to every
   worker that (re)starts, so the workers do not drift apart (unless ``--model_config_file`` changed
   since: the running workers have applied the file then, and so does the restarted one);
6. on SIGTERM/SIGINT it tells every worker (over its pipe) to drain, as a single server does, and exits
   0 when all did (a second signal is passed on too: the workers then stop at once). A worker still
   loading its models stops loading rather than finishing first (which could outlast the drain).

Each **worker** is an ordinary :class:`~teeserve.serving._server.ModelServer` given the keys, with
``reuse_port`` so the kernel spreads new connections over the workers; it loads its models before it
listens, so no connection reaches a worker that cannot answer yet. Workers ignore SIGINT and SIGTERM:
a terminal's Ctrl-C, ``timeout`` or systemd signal the whole process group, and a worker that got the
signal both directly and from the supervisor would take the second one as "stop now". The
supervisor alone decides, and a worker stops when the supervisor's end of the pipe closes, so none
outlives it.

What differs from one process: each worker loads its own copy of the models (memory × N), and state
is per worker: GetModelStatus and readiness describe the worker that answered (they converge, as each
applies the same config), the config file is polled by each worker. Metrics are merged across workers.
With ``--tensorflow_intra_op_parallelism`` unset (0: the runtime's default of every core), each worker
gets ``max(1, CPUs // N)`` intra-op threads so N workers do not oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from .._errors import TeeserveError
from ._flags import ServerOptions, usable_cpus
from ._server import StopSignals

__all__ = ["run_workers", "WorkerFailed"]

log = logging.getLogger("teeserve.serving.workers")

#: Restart back-off for a worker that died after it was up.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
#: Beyond --drain-timeout, how long the supervisor waits before it kills a worker that did not exit.
KILL_GRACE_S = 10.0
#: A worker up this long before it died restarts with the first back-off again.
STABLE_S = 60.0


class WorkerFailed(TeeserveError):
    """A worker could not start; carries that worker's exit status and message."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- the supervisor -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    index: int
    process: Any = None
    conn: Connection | None = None
    up: bool = False
    up_since: float = 0.0
    restarts: int = 0
    restart_at: float | None = None


def run_workers(options: ServerOptions, keys: dict[str, bytes] | None = None) -> int:
    """Run ``options.workers`` serving processes until SIGTERM/SIGINT; returns the exit status.
    ``keys``: wrap keys already obtained (then no attestation here)."""
    import asyncio

    from .._errors import UsageError
    from ._server import ModelServer

    if getattr(mp.current_process(), "_inheriting", False):
        # multiprocessing's spawn is re-running an unguarded main script inside a worker.
        raise UsageError("teeserve serve --workers was started from a script without "
                         "'if __name__ == \"__main__\":' around it; the workers re-run that script")
    with contextlib.ExitStack() as stack:
        # The ports first: a port in use should not cost an attestation (and an audit entry).
        worker_options, reserved = _reserve_ports(options)
        for sock in reserved:
            stack.callback(sock.close)
        _check_balance(options)
        keyring_owner = ModelServer(options, keys=keys)
        keyring_owner._check_key_names(keyring_owner._expected_key_names())  # before attesting, too
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a stop while the keys are obtained
        try:
            asyncio.run(keyring_owner.obtain_keys())
        finally:
            signal.signal(signal.SIGTERM, previous)
        ring = keyring_owner.keyring
        keys = {name: ring.get(name) for name in ring.names()}
        metrics_dir = tempfile.mkdtemp(prefix="teeserve-metrics-")  # 0700
        stack.callback(shutil.rmtree, metrics_dir, True)
        worker_options = _share_cores(worker_options)
        return _Supervisor(worker_options, keys, metrics_dir).run()


def _check_balance(options: ServerOptions) -> None:
    """``--worker-connection-balance round-robin`` was asked for: the kernel must load its program
    (CAP_BPF, Linux 5.12+), or the server does not start, rather than quietly dealing by hash."""
    if options.worker_connection_balance != "round-robin":
        return
    from ._balance import BalanceUnavailable, RoundRobin
    from ._server import ServeError

    try:
        RoundRobin(options.workers).close()
    except BalanceUnavailable as exc:
        why = ("it needs CAP_BPF (or root), and a seccomp profile that allows bpf()" if exc.errno == errno.EPERM
               else "it needs Linux 5.12 or later with eBPF on a 64-bit process")
        raise ServeError(f"--worker-connection-balance round-robin: the kernel refused its eBPF program "
                         f"({exc.strerror or exc}); {why}. Use --worker-connection-balance hash (the default) "
                         "here") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the CLI reports "interrupted" (status 130): nothing was served yet


def _reserve_ports(options: ServerOptions) -> tuple[ServerOptions, list[socket.socket]]:
    """Bind (never listen) each TCP port with SO_REUSEPORT: a port in use fails here, before any
    worker starts, and the numbers stay ours while workers restart."""
    reserved: list[socket.socket] = []
    try:
        for field, what in (("port", "gRPC"), ("rest_api_port", "REST")):
            port = getattr(options, field)
            if port:  # 0 = that API is off (tensorflow_model_server's meaning)
                reserved.append(_reserve(options.host, port, what))
    except BaseException:
        for sock in reserved:
            sock.close()
        raise
    return options, reserved


def _reserve(host: str, port: int, what: str) -> socket.socket:
    from ._server import ServeError

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    # First without SO_REUSEPORT: that bind fails if anyone holds the port, even a listener that
    # would itself accept sharing it (another server with SO_REUSEPORT must not get half our clients).
    # The reservation then has SO_REUSEPORT (our workers join it) but not SO_REUSEADDR: two
    # non-listening SO_REUSEADDR sockets may share an address, and another teeserve's check bind
    # must fail while our workers are still loading.
    for reuse_port in (False, True):
        sock = socket.socket(family, kind, proto)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ServeError(f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}") from None
        if not reuse_port:
            sock.close()
    return sock


def _share_cores(options: ServerOptions) -> ServerOptions:
    if options.tensorflow_intra_op_parallelism:
        return options
    threads = max(1, usable_cpus() // options.workers)
    log.info("each worker uses %d intra-op thread(s) (--tensorflow_intra_op_parallelism unset)", threads,
             extra={"workers": options.workers, "intra_op_threads": threads})
    return dataclasses.replace(options, tensorflow_intra_op_parallelism=threads)


class _Supervisor:
    def __init__(self, options: ServerOptions, keys: dict[str, bytes], metrics_dir: str) -> None:
        self.options = options
        self.keys = keys
        self.metrics_dir = metrics_dir
        self.ctx = mp.get_context("spawn")
        self.workers = [_Worker(i + 1) for i in range(options.workers)]
        #: --worker-cpu-affinity auto: each slot's CPUs, split once from the supervisor's mask at start,
        #: so a restarted worker takes its slot's CPUs again and never a running worker's.
        self.slot_cpus: dict[int, frozenset[int]] = {}
        if options.worker_cpu_affinity == "auto":
            mask = os.sched_getaffinity(0)
            self.slot_cpus = {w.index: frozenset(slot_cpus(w.index, options.workers, mask)) for w in self.workers}
            smallest = min(len(cpus) for cpus in self.slot_cpus.values())
            if options.tensorflow_intra_op_parallelism > smallest:
                log.warning("--tensorflow_intra_op_parallelism=%d is more than the %d CPU(s) a pinned worker "
                            "has (--worker-cpu-affinity auto): its intra-op threads will share them",
                            options.tensorflow_intra_op_parallelism, smallest)
        self._stops = StopSignals()
        self.failure: WorkerFailed | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._announced = False
        #: The last HandleReloadConfigRequest a worker applied, with the SHA-256 of --model_config_file
        #: at that time: a (re)starting worker applies it too, unless the file has changed since.
        self.last_reload: tuple[bytes, str | None] | None = None
        #: Relayed reloads not yet applied by every serving worker: id -> (origin, its token, waiting).
        self._relays: dict[int, tuple[_Worker, int, set[int]]] = {}
        self._relay_ids = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        previous_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        try:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # inherited by the spawned workers
            log.info("starting %d workers", len(self.workers),
                     extra={"workers": len(self.workers), "grpc_port": self.options.port,
                            "rest_api_port": self.options.rest_api_port})
            for w in self.workers:
                self._start(w)
            self._loop()
        finally:
            if previous_dir is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous_dir
            self._stop_all()
            signal.set_wakeup_fd(old_fd)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self._wake_r.close()
            self._wake_w.close()
        if self.failure is not None:
            raise self.failure
        # Workers waiting for a restart are not counted: their crash was logged when it happened.
        stopped_by_signal = (-signal.SIGTERM, -signal.SIGINT) if self.signals else ()
        bad = [w.index for w in self.workers
               if w.process is not None and w.restart_at is None
               and w.process.exitcode not in (0, None, *stopped_by_signal)]
        if bad:
            log.warning("workers %s did not exit cleanly", bad)
            return 1
        log.info("stopped")
        return 0

    @property
    def signals(self) -> int:
        """Stop signals received so far (an echo through the process group counts once)."""
        return self._stops.count

    def _on_signal(self, signum: int, frame: Any) -> None:
        # The work happens in _loop (woken through the wakeup fd): a handler only counts.
        self._stops.arrived()

    def _start(self, w: _Worker) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=worker_main, args=(child, w.index), name=f"teeserve-worker-{w.index}",
                                   daemon=False)
        # The child must ignore SIGINT/SIGTERM from its first instruction (a signal to the whole group
        # would otherwise kill a worker that is still starting): ignored dispositions survive exec, and
        # Python keeps an inherited SIG_IGN for SIGINT. Meanwhile the supervisor's own signals are
        # blocked, so one that arrives now is delivered to its handler right after, not lost.
        stops = (signal.SIGINT, signal.SIGTERM)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(stops))
        handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stops}
        try:
            process.start()
        except OSError as exc:  # cannot fork/exec now (EAGAIN, ENOMEM): a failed (re)start
            parent.close()
            child.close()
            if w.restarts == 0 and not w.up and self.failure is None and w.process is None:
                self.failure = WorkerFailed(f"cannot start worker {w.index}: {exc}", 1)
                return
            delay = self._schedule_restart(w)
            log.error("cannot start worker %d (%s); trying again in %gs", w.index, exc, delay)
            return
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        with contextlib.suppress(OSError):  # a child that died at once: its sentinel reports it
            parent.send(("start", self.options, self.keys, self.last_reload, self.slot_cpus.get(w.index)))
        w.process, w.conn, w.up, w.restart_at = process, parent, False, None
        log.info("worker %d started", w.index, extra={"worker": w.index, "pid": process.pid})

    def _loop(self) -> None:
        handled = 0
        while True:
            if self.signals > handled:
                handled = self.signals
                self._forward()
                return
            if self.failure is not None:
                return
            now = time.monotonic()
            for w in self.workers:
                if w.restart_at is not None and now >= w.restart_at:
                    self._start(w)
            waits: list[Any] = [self._wake_r]
            for w in self.workers:
                if w.restart_at is None and w.process is not None:
                    waits.append(w.process.sentinel)
                    if w.conn is not None:
                        waits.append(w.conn)
            pending = [w.restart_at - now for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(pending)) if pending else None
            for ready in wait(waits, timeout):
                if ready is self._wake_r:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                for w in self.workers:
                    if ready is w.conn:
                        self._message(w)
                    elif w.process is not None and ready == w.process.sentinel:
                        self._exited(w)

    def _message(self, w: _Worker) -> None:
        assert w.conn is not None
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            w.conn.close()
            w.conn = None  # the process is exiting: its sentinel tells the rest
            return
        kind = msg[0]
        if kind == "up":
            w.up = True
            w.up_since = time.monotonic()
            if all(x.up for x in self.workers) and not self._announced:
                self._announced = True
                log.info("all %d workers up", len(self.workers), extra={"workers": len(self.workers)})
        elif kind == "reload":
            # To every worker, the sender too and starting ones (they apply it once their core has
            # started), in the order the supervisor got them: concurrent reloads on two workers end
            # with the same last config everywhere. The sender's call returns once every running
            # worker has applied it (a starting one applies it before it listens, then says so).
            _, data, token, file_digest = msg
            self.last_reload = (data, file_digest)
            self._relay_ids += 1
            waiting: set[int] = set()
            for other in self.workers:
                if other.conn is not None:
                    try:
                        other.conn.send(("reload", data, self._relay_ids))
                    except OSError:
                        continue
                    waiting.add(other.index)
            self._relays[self._relay_ids] = (w, token, waiting)
            self._settle_relays()
        elif kind == "applied":
            relay = self._relays.get(msg[1])
            if relay is not None:
                relay[2].discard(w.index)
                self._settle_relays()
        elif kind == "fatal":
            if not w.up and w.restarts == 0 and self.failure is None:
                self.failure = WorkerFailed(msg[2], msg[1])
            else:  # a restart that failed: say why (the server goes on with the other workers)
                log.error("worker %d: %s", w.index, msg[2], extra={"worker": w.index})

    def _settle_relays(self) -> None:
        """Tell each worker whose reload every running worker has applied that it may answer."""
        for rid, (origin, token, waiting) in list(self._relays.items()):
            if waiting:
                continue
            del self._relays[rid]
            if origin.conn is not None:
                with contextlib.suppress(OSError):
                    origin.conn.send(("reloaded", token))

    def _exited(self, w: _Worker) -> None:
        assert w.process is not None
        w.process.join()
        code = w.process.exitcode
        if w.conn is not None:  # a last message (fatal) may still be in the pipe
            while w.conn is not None and w.conn.poll():
                self._message(w)
            if w.conn is not None:
                w.conn.close()
                w.conn = None
        # A dead worker applies nothing more, and a reload it received has no caller any more.
        for rid, (origin, _, waiting) in list(self._relays.items()):
            if origin is w:
                del self._relays[rid]
            else:
                waiting.discard(w.index)
        self._settle_relays()
        if self.signals and code in (-signal.SIGTERM, -signal.SIGINT):
            return  # the stop signal itself, sent to the whole group (the supervisor is stopping)
        if not w.up and w.restarts == 0:  # the first start failed: the whole server fails
            if self.failure is None:
                self.failure = WorkerFailed(f"worker {w.index} exited with status {code} while starting",
                                            code if isinstance(code, int) and code > 0 else 1)
            return
        if w.up and time.monotonic() - w.up_since > STABLE_S:
            w.restarts = 0  # it had been serving a good while: this is a fresh failure, not a loop
        what = "exited unexpectedly" if w.up else "failed to restart"
        w.up = False
        delay = self._schedule_restart(w)
        log.error("worker %d %s (status %s); restarting it in %gs", w.index, what, code, delay,
                  extra={"worker": w.index, "exit_status": code, "restarts": w.restarts})

    @staticmethod
    def _schedule_restart(w: _Worker) -> float:
        """One more restart of ``w`` after the back-off (1 s, doubling to 30 s); returns the delay."""
        w.restarts += 1
        delay = min(RESTART_FIRST_S * 2 ** (w.restarts - 1), RESTART_MAX_S)
        w.restart_at = time.monotonic() + delay
        return delay

    def _forward(self) -> None:
        """Pass the first signal on as "drain", any later one as "stop" (at once)."""
        log.info("signal received: draining %d workers (up to %gs)", len(self.workers), self.options.drain_timeout)
        self._signal_all("drain")
        deadline = time.monotonic() + self.options.drain_timeout + KILL_GRACE_S
        handled = self.signals
        while any(w.process is not None and w.process.exitcode is None for w in self.workers):
            if self.signals > handled:
                handled = self.signals
                log.warning("signal received again: workers stop now")
                self._signal_all("stop")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sentinels = [w.process.sentinel for w in self.workers if w.process is not None and w.process.exitcode is None]
            wait([*sentinels, self._wake_r], min(left, 1.0))
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def _signal_all(self, what: str) -> None:
        """"drain" or "stop" to every running worker."""
        for w in self.workers:
            if w.process is not None and w.process.exitcode is None and w.conn is not None:
                with contextlib.suppress(OSError):
                    w.conn.send((what,))

    def _stop_all(self) -> None:
        """At exit, whatever the reason: drain every worker still running (closing its pipe says the
        same to one that is not listening yet), then SIGKILL stragglers."""
        running = [w for w in self.workers if w.process is not None and w.process.exitcode is None]
        for w in running:
            if w.conn is not None:
                with contextlib.suppress(OSError):
                    w.conn.send(("drain",))
                w.conn.close()
                w.conn = None
        deadline = time.monotonic() + self.options.drain_timeout + KILL_GRACE_S
        for w in running:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                log.warning("worker %d did not stop in time: killed", w.index)
                w.process.kill()
                w.process.join()
        for w in self.workers:
            if w.conn is not None:
                w.conn.close()
                w.conn = None


# --- a worker -------------------------------------------------------------------------------------


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def worker_main(conn: Connection, index: int) -> None:
    """The entry point of a worker process (spawned by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides (see the module docstring)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ._server import configure_logging

    try:
        # initial_reload: (config, file digest) or None; cpus: --worker-cpu-affinity auto's, else None
        kind, options, keys, initial_reload, cpus = conn.recv()
    except (EOFError, OSError):
        os._exit(1)
    assert kind == "start"
    from ._metrics import name_worker_files

    name_worker_files(index)  # before any metric is recorded: a restart counts on in the same files
    configure_logging(options.log_format, options.log_level)
    for name in ("teeserve", "grpc"):  # the loggers configure_logging routes
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_WorkerField(index))
    sender = _Sender(conn)
    code = 0
    try:
        if cpus:
            pin_to_cpus(index, cpus)  # before gRPC, the loop or ONNX Runtime start threads: they inherit it
        from . import _eventloop

        code = _eventloop.run(_serve(options, keys, initial_reload, conn, sender), options.event_loop)
    except TeeserveError as exc:
        sender.send(("fatal", exc.exit_code, str(exc)))
        code = exc.exit_code
    except BaseException as exc:  # a bug: the supervisor reports it, the log keeps the traceback
        log.exception("worker %d failed", index)
        sender.send(("fatal", 70, f"internal error in worker {index}: {type(exc).__name__}: {exc}"))
        code = 70
    finally:
        with contextlib.suppress(OSError):
            conn.close()
    logging.shutdown()
    os._exit(code)  # worker threads (inference, gRPC) are done or abandoned by the drain: leave now


def slot_cpus(index: int, workers: int, cpus: set[int] | list[int]) -> set[int]:
    """``--worker-cpu-affinity auto``: the CPUs of worker ``index`` (1-based) among ``cpus`` (those the
    supervisor may use). The CPUs are split into ``workers`` consecutive groups whose sizes differ by
    at most one (4 CPUs, 2 workers: {0, 1} and {2, 3}); with more workers than CPUs, one CPU each, round
    robin. The supervisor splits its mask once, at start: a restarted worker takes its slot's CPUs
    again."""
    ordered = sorted(cpus)
    if workers >= len(ordered):
        return {ordered[(index - 1) % len(ordered)]}
    size, extra = divmod(len(ordered), workers)
    first = (index - 1) * size + min(index - 1, extra)
    return set(ordered[first:first + size + (1 if index <= extra else 0)])


def pin_to_cpus(index: int, cpus: frozenset[int]) -> None:
    """Pin this worker process, every thread of it, to ``cpus``: its slot's share of the CPUs
    (:func:`slot_cpus`, computed once by the supervisor).

    Called first thing in a worker, so the threads gRPC, the event loop and ONNX Runtime start later
    inherit the mask. Why: with one worker per core, a worker that stays on its core keeps its caches
    and never shares a core with another worker while a core runs only the load; measured on 2 cores
    (docs/serving.md, "Several workers"): more requests/s and a shorter latency tail. Only CPUs this
    process may still use are taken (a cpuset may have shrunk since the supervisor started); with none
    left, or when the kernel refuses, the worker runs unpinned, with a warning.
    """
    original = os.sched_getaffinity(0)
    chosen = set(cpus) & original
    if not chosen:
        log.warning("worker %d: none of its CPUs (%s) may be used any more; it runs on any CPU", index,
                    ",".join(str(c) for c in sorted(cpus)))
        return
    tasks = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    try:
        for tid in tasks:
            with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
                os.sched_setaffinity(tid, chosen)
    except OSError as exc:
        for tid in tasks:  # all or nothing: not half the threads pinned
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, original)
        log.warning("worker %d: cannot pin to its CPUs (%s); it runs on any CPU", index, exc.strerror or exc)
        return
    shown = ",".join(str(c) for c in sorted(chosen))
    log.info("worker %d pinned to CPU %s", index, shown, extra={"worker": index, "cpus": shown})


class _Sender:
    """Thread-safe sends to the supervisor (gRPC threads relay reloads, the loop says "up")."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._conn.send(msg)


async def _serve(options: ServerOptions, keys: dict[str, bytes], initial_reload: tuple[bytes, str | None] | None,
                 conn: Connection, sender: _Sender) -> int:
    import asyncio

    from ._server import ModelServer, config_file_digest, serve_server

    loop = asyncio.get_running_loop()
    answers: dict[int, asyncio.Future[None]] = {}
    tokens = itertools.count(1)

    async def relay(data: bytes) -> None:
        """Pass an applied reload to the supervisor; return once every running worker applied it
        (at once when this worker drains or the supervisor is gone: nobody would answer)."""
        file_digest = config_file_digest(options.model_config_file)
        if closing:
            sender.send(("reload", data, 0, file_digest))
            return
        token = next(tokens)
        answers[token] = loop.create_future()
        try:
            sender.send(("reload", data, token, file_digest))
            await answers[token]
        finally:
            del answers[token]

    def answered(token: int) -> None:
        fut = answers.get(token)
        if fut is not None and not fut.done():
            fut.set_result(None)

    closing = False

    def answer_all() -> None:
        """Draining, or no supervisor: a reload call waiting for the others returns now."""
        nonlocal closing
        closing = True
        for token in list(answers):
            answered(token)

    async def apply(data: bytes, rid: int) -> None:
        await server.apply_relayed_reload(data)
        sender.send(("applied", rid))

    server = ModelServer(options, keys=keys, reuse_port=True, on_reload=relay,
                         on_up=lambda: sender.send(("up",)),
                         initial_reload=initial_reload[0] if initial_reload else None,
                         initial_reload_file_digest=initial_reload[1] if initial_reload else None)

    def listen() -> None:
        """Relayed reloads and "drain"; EOF = the supervisor is gone: drain too (no orphaned workers)."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # the loop has already finished
                    loop.call_soon_threadsafe(server.request_stop)
                    loop.call_soon_threadsafe(answer_all)  # no supervisor to wait for any more
                return
            with contextlib.suppress(RuntimeError):
                if msg[0] == "reload":
                    asyncio.run_coroutine_threadsafe(apply(msg[1], msg[2]), loop)
                elif msg[0] == "reloaded":
                    loop.call_soon_threadsafe(answered, msg[1])
                elif msg[0] == "drain":  # as SIGTERM to a single server
                    loop.call_soon_threadsafe(answer_all)  # the supervisor reads no answers now
                    loop.call_soon_threadsafe(server.on_signal, signal.SIGTERM)
                elif msg[0] == "stop":  # the supervisor got a second signal: no more waiting
                    loop.call_soon_threadsafe(answer_all)
                    server.stop_now("the supervisor was signalled again")

    threading.Thread(target=listen, name="teeserve-supervisor-pipe", daemon=True).start()
    return await serve_server(server, signals=())
