"""``teeserve serve``: assemble keys, TLS, the serving core and the gRPC and REST front ends.

Strategy: :class:`ModelServer` runs the steps in a fixed order, each one a method, so the key-broker
work can replace the first without touching the rest:

1. **obtain keys** (:meth:`ModelServer.obtain_keys`): fill the :class:`KeyRing` from ``--wrap-key``
   and/or, by remote attestation, from the key broker (``--tee``, ``--key-broker``). Nothing below runs until keys are in, and
   the server is not ready before.
2. **TLS** (:meth:`ModelServer.load_tls`): read ``--ssl_config_file`` (a Gramine protected file is
   decrypted in memory with the ``default`` key) into gRPC credentials and an ``ssl.SSLContext``.
   ``client_verify: true`` means mutual TLS on both protocols. Without it: a loud plaintext warning.
3. **core** (:meth:`ModelServer.make_core`): the serving core from the model config and the flags.
4. **listen**: gRPC (its thread-pool server: Predict runs in its workers, every other call on the event
   loop) and REST (on the event loop); health NOT_SERVING, liveness SERVING.
5. **load**: the core loads the models (in worker threads) and, with ``--model_config_file`` and
   ``--model_config_file_poll_wait_seconds``, re-reads the config file; a watcher flips gRPC health
   to SERVING when ``core.is_ready()``. The REST readiness URL asks the core directly.
6. **serve** until SIGTERM or SIGINT, then **drain**: health NOT_SERVING, stop accepting, refuse
   reloads and abandon loads in progress (a reload's too), give in-flight requests
   ``--drain-timeout`` seconds, close the core, exit 0. A second signal during
   the drain (not within 0.5 s: that is one signal sent to the process and its group) ends it at once
   (exit 1).

Logs go to stderr as text or JSON lines (``--log-format json``), one event per line, with the event's
fields (ports, model names, durations), never key material or request contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import TeeserveError, UsageError
from ._flags import ServerOptions

__all__ = [
    "ModelServer", "ServeError", "TlsSetup", "configure_logging", "measurement", "resolve_tee", "run", "serve",
    "serve_server",
]

log = logging.getLogger("teeserve.serving.server")


class ServeError(TeeserveError):
    """The server could not start (a port in use, unreadable files, no key for an encrypted file)."""


class KeyReleaseRefused(ServeError):
    """The key broker denied this server its keys (exit status 3, as ``KeyReleaseDenied``)."""

    exit_code = 3


# --- logging --------------------------------------------------------------------------------------

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus any ``extra={...}`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


def configure_logging(fmt: str = "text", level: str = "info", stream: Any = None) -> None:
    """Route the ``teeserve`` loggers (and gRPC's Python logger) to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("teeserve", "grpc"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("teeserve").setLevel(level.upper())
    logging.getLogger("grpc").setLevel("WARNING")


# --- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsSetup:
    """What ``--ssl_config_file`` gives each front end (both ``None`` = plaintext)."""

    grpc_credentials: Any = None
    ssl_context: Any = None
    mutual: bool = False
    protected: bool = False


#: A second SIGTERM/SIGINT within this many seconds of the first is the same one delivered twice.
SIGNAL_ECHO_S = 0.5


class StopSignals:
    """Counts stop signals (SIGTERM/SIGINT); one delivered to both the process and its group
    (timeout(1), systemd and shells do that) within :data:`SIGNAL_ECHO_S` counts once."""

    def __init__(self) -> None:
        self.count = 0
        self._first = 0.0

    def arrived(self) -> bool:
        """Count a signal; False when it is the echo of the first one."""
        now = time.monotonic()
        if self.count and now - self._first < SIGNAL_ECHO_S:
            return False
        if not self.count:
            self._first = now
        self.count += 1
        return True


# --- the server -----------------------------------------------------------------------------------


class ModelServer:
    """One ``teeserve serve`` process (see the module docstring for the steps).

    As one of several ``--workers`` (``teeserve.serving._workers``): ``keys`` are the keys the
    supervisor obtained (no attestation here), ``reuse_port`` shares the ports with the other workers,
    ``on_reload`` is given the serialized ``ModelServerConfig`` of every HandleReloadConfigRequest this
    process applied and returns once every other serving worker has applied it too (so that, as with
    TF Serving, a model the reload added is there on any connection once the call returns),
    ``initial_reload`` is the last such config (a
    restarted worker applies it before it serves, unless ``--model_config_file`` changed since: its
    digest then differs from ``initial_reload_file_digest``, and the file, the newer config, stands)
    and ``on_up`` is called once it serves. A worker
    loads its models *before* it listens (the other workers answer meanwhile); a drain meanwhile
    cuts that loading short.
    """

    def __init__(
        self,
        options: ServerOptions,
        *,
        keys: dict[str, bytes] | None = None,
        reuse_port: bool = False,
        on_reload: Callable[[bytes], Awaitable[None]] | None = None,
        on_up: Callable[[], None] | None = None,
        initial_reload: bytes | None = None,
        initial_reload_file_digest: str | None = None,
    ) -> None:
        from ._secrets import KeyRing

        self.options = options
        self.keyring = KeyRing()
        self._given_keys = keys
        self._reuse_port = reuse_port
        self._on_reload = on_reload
        self._on_up = on_up
        self._core_started = asyncio.Event()
        #: Relayed reloads to apply before this worker listens: the last one before it (re)started,
        #: then those that arrive while its core starts.
        self._queued_reloads: list[bytes] = [initial_reload] if initial_reload is not None else []
        self._initial_reload_digest = initial_reload_file_digest if initial_reload is not None else None
        self.core: Any = None
        self.grpc_front: Any = None
        self.grpc_server: Any = None
        self._grpc_kind = ""  # "aio" or "threads" once gRPC listens
        self.rest_server: Any = None
        self.tls = TlsSetup()
        self.grpc_port = 0
        self.rest_port = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._signals = StopSignals()
        #: Why the server stopped on its own (initial model loading failed), if it did.
        self.failure: BaseException | None = None
        self._loaded = False
        #: Wakes the readiness watcher at once when the initial load ends (no polling delay at start).
        self._load_done = asyncio.Event()
        #: The drain ran out of time with inference still running in worker threads.
        self.forced = False

    # 1. keys ------------------------------------------------------------------------------------

    async def obtain_keys(self) -> None:
        """Fill the key ring before anything is decrypted: ``--wrap-key`` (a key file), and/or the
        key broker by remote attestation (``--key-broker``, or Gramine's ``SECRET_PROVISION_*``
        variables). While the broker is unreachable the attempt is retried with backoff until
        ``--key-broker-timeout``; a denial is final and stops the server (non-zero exit)."""
        if self._given_keys is not None:  # a worker: the supervisor attested and handed them over
            for name, key in self._given_keys.items():
                self.keyring.set(name, key)
            return
        if self.options.wrap_key_file:
            try:
                self.keyring.load_key_file(self.options.wrap_key_file)
            except OSError as exc:
                raise ServeError(f"--wrap-key {self.options.wrap_key_file}: {exc.strerror or exc}") from None
            log.info("wrap key loaded", extra={"key_name": "default", "source": "file"})
        if self.options.key_broker or os.environ.get("SECRET_PROVISION_SERVERS"):
            await self._obtain_from_broker()

    def _expected_key_names(self) -> set[str]:
        """The keys :meth:`obtain_keys` will install, as far as the flags tell."""
        if self._given_keys is not None:
            return set(self._given_keys)
        names = {"default"} if self.options.wrap_key_file else set()
        if self.options.key_broker or os.environ.get("SECRET_PROVISION_SERVERS"):
            names |= set(self.options.secrets) or {"default"}
        return names

    def _check_key_names(self, held: set[str]) -> None:
        """Every key that --model-key and --ssl-config-key name must be among ``held``."""
        missing = sorted({key for _, key in self.options.model_keys if key not in held})
        if missing:
            raise ServeError(f"--model-key names key(s) this server does not hold: {', '.join(missing)} "
                             "(obtain them with --secret NAME from the key broker)")
        key = self.options.ssl_config_key
        if key != "default" and self.options.ssl_config_file and key not in held:
            raise ServeError(f"--ssl-config-key {key}: this server does not hold that key "
                             "(obtain it with --secret NAME from the key broker)")

    async def _obtain_from_broker(self) -> None:
        from ..broker import BrokerUnreachable, KeyReleaseDenied, obtain_from_env, obtain_secrets
        from ..provision import decode_secret

        opts = self.options
        tee = resolve_tee(opts.tee)
        common: dict[str, Any] = dict(
            tee=tee, sim_key=opts.sim_key or None, config=opts.measured_config(),
            deadline=opts.key_broker_timeout,
        )
        if tee == "sim":
            if not opts.sim_key:
                raise ServeError("--tee sim needs --sim-key (the simulation key made by 'teeserve sim init')")
            log.warning("SIMULATED TEE: this server's attestation is simulated; it protects nothing from "
                        "the host and is accepted only by a broker policy that allows simulation")
        names = list(opts.secrets) or ["default"]
        where = opts.key_broker or os.environ.get("SECRET_PROVISION_SERVERS", "")
        log.info("obtaining keys by attestation", extra={"tee": tee, "broker": where, "secrets": names})
        t0 = time.monotonic()
        try:
            if opts.key_broker:
                got = await obtain_secrets(broker=opts.key_broker, broker_ca=opts.key_broker_ca, secrets=names,
                                           **common)
            else:
                got = await obtain_from_env(secrets=names, **common)
        except KeyReleaseDenied as exc:
            raise KeyReleaseRefused(f"the key broker {where} denied the key release ({exc}); "
                             "see the broker's audit log for the reason") from None
        except BrokerUnreachable as exc:
            raise ServeError(str(exc)) from None
        for name, secret in got.items():
            key = secret if len(secret) == 16 else decode_secret(secret, "hex")
            self.keyring.set(name, key)
        log.info("keys obtained by attestation", extra={"secrets": sorted(got), "tee": tee,
                                                         "seconds": round(time.monotonic() - t0, 3)})

    # 2. TLS -------------------------------------------------------------------------------------

    def load_tls(self) -> TlsSetup:
        path = self.options.ssl_config_file
        if not path:
            log.warning(
                "NO TLS: --ssl_config_file is not set, so gRPC and REST traffic (model inputs and outputs) "
                "travels in PLAINTEXT; anyone on the network path can read it. Use ssl.cfg for anything but "
                "a local test.",
                extra={"tls": "off"},
            )
            return TlsSetup()
        from .. import tlsmaterial
        from ._secrets import FileReadError

        try:
            data, protected = self.keyring.read_maybe_protected(path, key_name=self.options.ssl_config_key,
                                                                path_map=self.options.path_map)
        except FileReadError as exc:
            raise ServeError(f"--ssl_config_file: {exc}") from None
        except OSError as exc:
            raise ServeError(f"--ssl_config_file {path}: {exc.strerror or exc}") from None
        if not protected and self.options.require_encrypted:
            # (in-process Gramine mode: the host could otherwise put in a TLS key of its own choosing)
            raise ServeError(f"--ssl_config_file {path}: not a protected file, and --require-encrypted refuses "
                             "plaintext: encrypt it ('teeserve encrypt')")
        cfg = tlsmaterial.parse_ssl_config(data, path)
        if not protected:
            log.warning(
                "ssl.cfg is a plaintext file: the TLS private key is readable by the host; deploy it "
                "encrypted ('teeserve encrypt') in a TEE",
                extra={"ssl_config_file": path},
            )
        setup = TlsSetup(
            grpc_credentials=tlsmaterial.grpc_server_credentials(cfg),
            ssl_context=tlsmaterial.server_ssl_context(cfg, source=path),
            mutual=cfg.client_verify,
            protected=protected,
        )
        log.info(
            "TLS on gRPC and REST", extra={"tls": "mutual" if cfg.client_verify else "server-only",
                                           "ssl_config_encrypted": protected},
        )
        return setup

    # 3. core ------------------------------------------------------------------------------------

    def make_core(self) -> Any:
        """The serving core from the flags (the core reads tensorflow_model_server's flag names)."""
        import dataclasses

        from ._core import ServingCore

        o = self.options
        if o.model_config_file:
            # The config file replaces --model_name/--model_base_path (TF Serving's rule).
            o = dataclasses.replace(o, model_name="", model_base_path="")
        elif o.batching_parameters_file and not o.enable_batching:
            log.warning("--batching_parameters_file is ignored without --enable_batching=true")
        core = ServingCore.from_flags(o, keyring=self.keyring, path_map=o.path_map, model_keys=o.model_keys,
                                      require_encrypted_models=o.require_encrypted)
        if o.model_config_file:
            # A name the config file does not have is most likely a typo (the model would then try
            # the default key); it may also be a model a later reload adds, so this only warns.
            for model, key in o.model_keys:
                if model not in core.configured_names:
                    log.warning("--model-key %s=%s: --model_config_file has no model named %r (yet); "
                                "its models use the key 'default' unless a --model-key names them",
                                model, key, model, extra={"model": model})
        return core

    # 4. listen ----------------------------------------------------------------------------------

    async def start_grpc(self) -> None:
        import grpc

        from ._grpc import GrpcFrontEnd, server_options

        o = self.options
        if not o.port and not o.grpc_socket_path:
            return
        # --grpc-server (ServerOptions.grpc_server_kind): grpc.aio on this event loop, where a small
        # model runs inline and a bigger one in the inference threads; or gRPC's thread-pool server,
        # where Predict runs in its worker threads and every other call is handed to the loop. Each is
        # the faster one for its process count (auto). --grpc_max_threads caps the calls in progress:
        # more wait in line, as on TensorFlow Serving (on aio: inference calls; on threads: the pool).
        from concurrent.futures import ThreadPoolExecutor

        self._grpc_kind = o.grpc_server_kind
        threaded = self._grpc_kind == "threads"
        self.grpc_front = GrpcFrontEnd(self.core, max_concurrent=o.grpc_max_threads,
                                       tensor_content=o.enable_serialization_as_tensor_content, threaded=threaded,
                                       reload_config=self._reload_and_relay if self._on_reload else None)
        options = server_options(o.grpc_channel_arguments, reuse_port=self._reuse_port)
        server: Any
        if threaded:
            threads = o.grpc_max_threads or 2 * (os.cpu_count() or 1)
            self._grpc_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="teeserve-grpc")
            server = grpc.server(self._grpc_pool, options=options)
            self.grpc_front.add_to_threaded_server(server, asyncio.get_running_loop())
        else:
            server = grpc.aio.server(options=options)
            self.grpc_front.add_to_server(server)
        addresses = []
        if o.port:
            host = f"[{o.host}]" if ":" in o.host else o.host
            addresses.append(f"{host}:{o.port}")
        if o.grpc_socket_path:
            addresses.append(f"unix:{o.grpc_socket_path}")
        for address in addresses:
            try:
                if self.tls.grpc_credentials is not None:
                    bound = server.add_secure_port(address, self.tls.grpc_credentials)
                else:
                    bound = server.add_insecure_port(address)
            except RuntimeError:
                bound = 0
            if not bound:
                raise ServeError(f"cannot listen for gRPC on {address} (in use, or not allowed)")
            if not address.startswith("unix:"):
                self.grpc_port = bound
        await self.grpc_front.init_health()
        if threaded:
            server.start()
        else:
            await server.start()
        self.grpc_server = server
        log.info(
            "gRPC API listening",
            extra={"addresses": ",".join(addresses), "tls": self._tls_name(), "grpc_server": self._grpc_kind},
        )

    async def start_rest(self) -> None:
        o = self.options
        if not o.rest_api_port:
            if o.monitoring_config_file:
                log.warning("--monitoring_config_file needs --rest_api_port: metrics are not served")
            return
        from .rest import start_rest_server

        try:
            self.rest_server = await start_rest_server(
                self.core,
                o.host,
                o.rest_api_port,
                ssl_context=self.tls.ssl_context,
                timeout_ms=o.rest_api_timeout_in_ms,
                num_threads=o.rest_api_num_threads,
                monitoring_path=self.monitoring_path(),
                enable_cors=o.rest_api_enable_cors_support,
                reuse_port=self._reuse_port,
            )
        except OSError as exc:
            raise ServeError(f"cannot listen for REST on {o.host}:{o.rest_api_port}: {exc.strerror or exc}") from None
        self.rest_port = self.rest_server.port

    def _balance_connections(self) -> None:
        """``--worker-connection-balance round-robin`` (a worker, once it listens): new connections to
        the shared ports go to each worker in turn (serving/_balance.py). The supervisor checked at
        start that the kernel loads the program; a worker it refuses later keeps the kernel's hash."""
        o = self.options
        if o.worker_connection_balance != "round-robin":
            return
        from ._balance import BalanceUnavailable, attach_round_robin

        ports = [p for p in (self.grpc_port, self.rest_port) if p]
        try:
            attached = attach_round_robin(ports, o.workers)
        except BalanceUnavailable as exc:
            log.warning("--worker-connection-balance round-robin: the kernel refused it (%s); new connections "
                        "go by the kernel's hash", exc.strerror or exc)
            return
        for port, count in attached.items():
            if not count:
                log.warning("--worker-connection-balance round-robin: no single listening socket of this worker "
                            "on port %d; its new connections go by the kernel's hash", port)

    def monitoring_path(self) -> str | None:
        """The Prometheus path from ``--monitoring_config_file`` (None = metrics not served)."""
        path = self.options.monitoring_config_file
        if not path:
            return None
        from google.protobuf import text_format

        from .._proto import pb

        try:
            data, _ = self.keyring.read_maybe_protected(path, path_map=self.options.path_map)
            msg = text_format.Parse(data.decode("utf-8"), pb.MonitoringConfig())
        except (OSError, TeeserveError) as exc:
            raise ServeError(f"--monitoring_config_file: {exc}") from None
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise UsageError(f"--monitoring_config_file {path}: not a text-format MonitoringConfig: {exc}") from None
        prom = msg.prometheus_config
        if not prom.enable:
            return None
        mpath = prom.path or "/monitoring/prometheus/metrics"
        if not mpath.startswith("/"):
            raise UsageError(f"--monitoring_config_file {path}: prometheus_config.path must start with '/'")
        return mpath

    def _tls_name(self) -> str:
        if self.tls.grpc_credentials is None:
            return "plaintext"
        return "mutual" if self.tls.mutual else "server-only"

    # 5. run -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Steps 1-4, then model loading in the background. Raises ServeError/UsageError on bad setup."""
        o = self.options
        t0 = time.perf_counter()
        for name in o.accepted_only:
            log.info("flag accepted without effect", extra={"flag": f"--{name}"})
        self._check_key_names(self._expected_key_names())  # before attesting: no release for nothing
        await self.obtain_keys()
        self._check_key_names(set(self.keyring.names()))
        self.tls = self.load_tls()
        self.core = self.make_core()
        if self._initial_reload_digest is not None and \
                config_file_digest(o.model_config_file) != self._initial_reload_digest:
            # The config file changed after the last relayed reload (the running workers have
            # applied the file by now): the file is the newer config, so this worker keeps it.
            self._queued_reloads.pop(0)
            log.info("--model_config_file changed after the last reload relayed by another worker: "
                     "starting from the file", extra={"model_config_file": o.model_config_file})
        if self._reuse_port:
            # One of several workers: join the shared ports only once the models are in (and the
            # latest relayed config applied), or the kernel would hand this worker connections it
            # can only answer with NOT_FOUND while the others serve.
            if not await self._load_unless_stopped():
                return  # drained while loading: nothing listens; drain() closes what was loaded
            self._core_started.set()
            self._after_load(t0)
            await self.start_grpc()
            await self.start_rest()
            self._balance_connections()
            if self._on_up is not None:
                self._on_up()
        else:
            await self.start_grpc()
            await self.start_rest()
            self._tasks.append(asyncio.create_task(self._load_models(t0), name="teeserve-load"))
        self._tasks.append(asyncio.create_task(self._watch_readiness(), name="teeserve-readiness"))
        from ._metrics import METRICS

        if METRICS.multiprocess:
            self._tasks.append(asyncio.create_task(self._flush_metrics(METRICS), name="teeserve-metrics"))

    async def _load_unless_stopped(self) -> bool:
        """A worker's loading before it listens, cut short by a drain (the supervisor's SIGTERM):
        loading can take minutes, and a worker that finished it first would outlast the drain
        timeout and be killed. True when loaded; False when stopped (the core then holds only
        what stop() closes)."""
        loading = asyncio.ensure_future(self._load_worker_models())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((loading, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not loading.done():
                loading.cancel()
                await asyncio.wait((loading,))
        if loading.cancelled():
            log.info("stopped while loading the models: this worker never listened")
            return False
        loading.result()  # its error, if any
        return True

    async def _load_worker_models(self) -> None:
        try:
            await self.core.start()
        except TeeserveError:
            raise
        except Exception as exc:
            raise ServeError(f"model loading failed: {exc}") from exc
        while self._queued_reloads:  # applied before this worker listens
            await self.apply_relayed_reload(self._queued_reloads.pop(0), started=True)

    @staticmethod
    async def _flush_metrics(metrics: Any) -> None:
        """``--workers``: write this worker's request numbers to the shared files now and then
        (``_metrics.FLUSH_S``; see the module docstring of ``_metrics``)."""
        from ._metrics import FLUSH_S

        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                metrics.flush()
            except Exception:  # metrics must never stop a server
                log.exception("writing the metrics failed")

    async def _load_models(self, t0: float) -> None:
        try:
            await self.core.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.core.stopping:  # cut short by the drain: not a failure
                return
            log.error("model loading failed: %s", exc, exc_info=not isinstance(exc, TeeserveError))
            self.failure = exc
            self.request_stop()
            return
        self._core_started.set()
        self._after_load(t0)

    def _after_load(self, t0: float) -> None:
        self._loaded = True
        self._load_done.set()
        missing = [n for n in self.core.model_names() if not self.core.available_versions(n)]
        if missing:
            log.error("initial load finished but no version is available for: %s (see GetModelStatus "
                      "or GET /v1/models/NAME for the reason); the server stays up, not ready",
                      ", ".join(missing), extra={"seconds": round(time.perf_counter() - t0, 3)})
        else:
            log.info("models loaded", extra={"seconds": round(time.perf_counter() - t0, 3)})

    async def _reload_and_relay(self, config: Any) -> None:
        """HandleReloadConfigRequest on one of several workers: apply it here, then have the
        supervisor pass it to the other workers (a config that was applied, even in part) and answer
        once they have applied it."""
        from ._types import Code, ServingError

        assert self._on_reload is not None
        try:
            await self.core.reload_config(config)
        except ServingError as exc:
            if exc.code == Code.FAILED_PRECONDITION:  # applied, except for a label (see reload_config)
                await self._on_reload(config.SerializeToString())
            raise
        await self._on_reload(config.SerializeToString())

    async def apply_relayed_reload(self, data: bytes, *, started: bool = False) -> None:
        """A HandleReloadConfigRequest that another worker received and applied (waits until this
        worker's core has started, so one relayed during its start-up is applied right after it)."""
        from .._proto import pb

        if not started and not self._core_started.is_set():
            # Starting: the start-up applies it before listening (one order, no overlap with it).
            self._queued_reloads.append(data)
            await self._core_started.wait()
            return
        try:
            await self.core.reload_config(pb.ModelServerConfig.FromString(data))
            log.info("model config reloaded (relayed from another worker)")
        except Exception as exc:
            if self.core.stopping:
                log.info("relayed model config reload not applied: this worker is stopping")
            else:
                log.error("relayed model config reload failed: %s", exc)

    async def _watch_readiness(self) -> None:
        ready = False
        while True:
            try:
                # Not ready before the initial load has finished, whatever the core says.
                now = self._loaded and bool(self.core.is_ready())
            except Exception:
                log.exception("core.is_ready() failed")
                now = False
            if now != ready:
                ready = now
                if self.grpc_front is not None:
                    await self.grpc_front.set_ready(ready)
                log.info("ready" if ready else "not ready", extra={"ready": ready})
            if not self._load_done.is_set():
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._load_done.wait(), 0.5)
            else:
                await asyncio.sleep(0.1 if not ready else 0.5)

    def request_stop(self) -> None:
        self._stop.set()

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._signals.arrived():
            return  # the same stop delivered twice: not a second request
        if self._signals.count == 1:
            log.info("%s received: draining (up to %gs for in-flight requests)", name, self.options.drain_timeout,
                     extra={"signal": name})
            self._stop.set()
        else:
            self.stop_now(f"{name} received again")

    def stop_now(self, why: str) -> None:
        """End the process at once, in-flight requests or not (exit status 1)."""
        log.warning("%s: stopping now", why)
        logging.shutdown()
        os._exit(1)

    async def wait(self) -> None:
        await self._stop.wait()

    async def drain(self) -> None:
        """Stop accepting, let in-flight requests finish within ``--drain-timeout``, close the core.

        Sets :attr:`forced` when work was still running at the deadline (the caller then exits
        without waiting for inference threads that cannot be interrupted)."""
        grace = self.options.drain_timeout
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if self.grpc_front is not None:
            await self.grpc_front.enter_drain()
        if self.rest_server is not None:
            self.rest_server.handler.draining = True
        for task in self._tasks:
            task.cancel()
        if self.core is not None:
            # Reloads are refused from now on and a reload in progress ends now (its loads are
            # abandoned, its client gets UNAVAILABLE) instead of holding the drain; after the
            # cancel above, so that the initial load's task ends cancelled, not failed.
            self.core.begin_stop()
        closing = []
        if self.grpc_server is not None:
            if self._grpc_kind == "threads":
                stopped = self.grpc_server.stop(grace)  # a threading.Event, set when the last call ended
                closing.append(loop.run_in_executor(None, stopped.wait, grace + 5))
            else:
                closing.append(self.grpc_server.stop(grace))  # grpc.aio: done when the last call ended
        if self.rest_server is not None:
            closing.append(self.rest_server.close(grace))
        await asyncio.gather(*closing, return_exceptions=True)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.core is not None:
            remaining = max(t0 + grace - loop.time(), 0.0) + 1.0
            try:
                await asyncio.wait_for(self.core.stop(), timeout=remaining)
            except (TimeoutError, asyncio.TimeoutError):
                self.forced = True
                log.warning("in-flight work (requests, or a model load that cannot be interrupted) did not "
                            "finish within --drain-timeout; exiting without it",
                            extra={"drain_timeout": grace})
            except Exception:
                log.exception("stopping the serving core failed")
        from ._metrics import METRICS

        with contextlib.suppress(Exception):
            METRICS.flush()  # the last requests' numbers, before the files are merged or removed
        log.info("stopped", extra={"drain_seconds": round(loop.time() - t0, 3)})


def config_file_digest(path: str) -> str | None:
    """SHA-256 of ``--model_config_file`` as it is now (None without one, or when it cannot be read):
    tells a restarted worker whether the file changed after the last relayed reload."""
    if not path:
        return None
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


async def serve(options: ServerOptions, keys: dict[str, bytes] | None = None) -> int:
    """Run a server until SIGTERM/SIGINT; returns the exit code (0 after a clean drain). ``keys``:
    wrap keys already obtained (``gramine provision --mode in-process``), instead of the flags' sources."""
    return await serve_server(ModelServer(options, keys=keys))


async def serve_server(server: ModelServer, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """:func:`serve` for a server already made. ``signals`` are handled on the loop (a ``--workers``
    worker passes none: its supervisor decides and tells it over the pipe)."""
    from ._eventloop import loop_name

    loop = asyncio.get_running_loop()
    name = loop_name(loop)
    log.info("event loop: %s", name, extra={"event_loop": name})
    for sig in signals:
        loop.add_signal_handler(sig, server.on_signal, sig)
    try:
        try:
            await server.start()
        except BaseException:
            await server.drain()
            raise
        await server.wait()
        await server.drain()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    if server.forced:
        # Inference threads cannot be interrupted, and the interpreter would wait for them at exit:
        # the drain deadline is a promise to the orchestrator, so leave now.
        logging.shutdown()
        os._exit(0 if server.failure is None else 1)
    if server.failure is not None:
        if isinstance(server.failure, TeeserveError):
            raise server.failure
        raise ServeError(f"model loading failed: {type(server.failure).__name__}") from None
    return 0


def resolve_tee(tee: str) -> str:
    """``auto`` -> gramine when ``/dev/attestation/quote`` exists, tdx when configfs-tsm does, else sim."""
    if tee != "auto":
        return tee
    if os.path.exists("/dev/attestation/quote"):
        return "gramine"
    if os.path.isdir("/sys/kernel/config/tsm/report"):
        return "tdx"
    return "sim"


def measurement(options: ServerOptions) -> tuple[str, str]:
    """(TEE kind, hex measurement) this server attests with; only the simulated TEE can compute it
    here — under Gramine or TDX it is fixed by the enclave build (MRENCLAVE) or the TD (MRTD/RTMRs)."""
    tee = resolve_tee(options.tee)
    if tee != "sim":
        raise UsageError(f"--print-measurement: with --tee {tee} the measurement is the platform's "
                         "(gramine-sgx-sigstruct-view prints MRENCLAVE; a TD reports MRTD/RTMRs)")
    from ..attest import sim

    return tee, sim.code_measurement(options.measured_config()).hex()


def run(options: ServerOptions, *, print_measurement: bool = False, keys: dict[str, bytes] | None = None) -> int:
    """The ``teeserve serve`` entry point: logging, then :func:`serve` on a fresh event loop."""
    if print_measurement:
        _, value = measurement(options)
        print(value)
        return 0
    configure_logging(options.log_format, options.log_level)
    if options.workers > 1:
        from ._workers import run_workers

        return run_workers(options, keys=keys)
    if options.worker_cpu_affinity != "none":
        log.warning("--worker-cpu-affinity=%s has no effect with one serving process (--workers 1): it "
                    "pins --workers processes", options.worker_cpu_affinity)
    if options.worker_connection_balance != "hash":
        log.warning("--worker-connection-balance=%s has no effect with one serving process (--workers 1): "
                    "it deals connections to --workers processes", options.worker_connection_balance)
    from . import _eventloop

    return _eventloop.run(serve(options, keys), options.event_loop)
