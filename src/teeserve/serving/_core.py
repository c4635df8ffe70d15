"""The serving core: models, versions, requests. Implements :class:`ServingCoreAPI` for both front ends.

Construction (for the server assembly)::

    core = ServingCore(model_configs, keyring=keyring, options=options)      # list[ModelConfig]
    core = ServingCore.from_flags(flags, keyring=keyring)                      # tensorflow_model_server flags
    core = ServingCore.from_config_file(path, keyring=keyring, options=options,
                                        poll_wait_seconds=0)                   # --model_config_file
    await core.start()    # initial load (raises ServingError, e.g. a label on an unavailable version)
    ...
    await core.reload_config(model_server_config)   # HandleReloadConfigRequest; ServingError on bad config
    core.begin_stop()     # a drain began: reloads refused (UNAVAILABLE), loads in progress abandoned
    await core.stop()     # the same, then end a reload in progress, drain in-flight requests, unload all

Every method is called on the event loop thread (the one that ran ``start``), except
``predict_blocking``, which is called from worker threads and never on the loop. ``from_flags`` reads
these attributes of an argparse namespace (missing ones take TF Serving's defaults):
``model_name``, ``model_base_path``, ``model_config_file``, ``model_config_file_poll_wait_seconds``,
``file_system_poll_wait_seconds``, ``enable_batching``, ``batching_parameters_file``,
``enable_model_warmup``, ``num_request_iterations_for_warmup``, ``max_num_load_retries``,
``load_retry_interval_micros``, ``tensorflow_intra_op_parallelism``,
``tensorflow_inter_op_parallelism``, ``tensorflow_session_parallelism``, ``saved_model_tags``,
``allow_version_labels_for_unavailable_models``, ``enable_per_model_batching_parameters``,
``enable_signature_method_name_check``, and teeserve's ``onnx_execution_mode``.

Request API (all raise :class:`ServingError` with TF Serving's codes and messages, §9):
``await predict(ref, signature_name, inputs, output_filter)`` → PredictResult;
``await classify(ref, signature_name, input_proto)`` / ``await regress(...)`` → (name, version, result);
``await multi_inference(request_proto)`` → ``tensorflow.serving.MultiInferenceResponse``;
``signatures(ref)`` → (name, version, {signature name: Signature});
``model_status(name, version=None, label=None)`` → [VersionStatus] (newest first); ``is_ready()``;
``model_names()``. ``predict_blocking(...)`` is :meth:`predict` for a worker thread (gRPC's
thread-pool server), thread-safe, available while ``blocking_predict`` is true (no batching).

Strategy: request validation is shared, pure code (``backends/_run.py``); inference runs in worker
threads (``backends/_pool.py``; ``inference_threads``, default max(4, 2 x cores)); model loads run
in a separate small pool so a large load does not delay requests; the optional batcher sits between
validation and the workers. One exception keeps small models fast: a Predict whose version has
lately run in under ``INLINE_RUN_S`` (scaled up to this request's size), on numeric inputs of at
most ``INLINE_MAX_BYTES``, runs on the event loop itself, because the hand-off to a worker thread
and back (a queue, a wake-up, two GIL hand-overs) then costs more than the model: for the digits model, moving it onto the loop took the
server CPU of a REST request from about 600 to 400-500 µs. The estimate follows each version's run
times (``LoadedVersion.note_run``), so a model that turns out slow, or a bigger request, goes back to
the workers, and the loop stalls for about ``INLINE_RUN_S`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._proto import pb
from ._batching import BatchScheduler, batch_key
from ._config import (
    BatchingOptions,
    ConfigError,
    ModelConfig,
    ServingOptions,
    parse_model_server_config,
    read_batching_parameters_file,
    read_model_config_file,
    single_model_config,
)
from ._manager import ModelManager
from ._metrics import METRICS
from ._secrets import KeyRing
from ._types import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    Code,
    ModelRef,
    PredictResult,
    ServingError,
    Signature,
    VersionStatus,
)
from .backends._pool import InferencePool
from .backends._run import example_count, prepare_predict, run_classify, run_regress

__all__ = ["ServingCore"]

#: A Predict runs on the event loop when its version's recent runs took less than this (seconds) ...
INLINE_RUN_S = 0.0005
#: ... and its inputs are no larger than this (bytes); otherwise it runs on the inference pool.
INLINE_MAX_BYTES = 64 * 1024

def _timed_run(servable: Any, signature_name: str, inputs: Mapping[str, np.ndarray],
               aliases: Sequence[str]) -> tuple[dict[str, np.ndarray], float]:
    """``servable.run`` and how long it took by itself (no queueing, no hand-off)."""
    start = time.perf_counter()
    outputs = servable.run(signature_name, inputs, aliases)
    return outputs, time.perf_counter() - start


log = logging.getLogger("teeserve.serving")

#: Batch queues per version (one per signature, output selection and non-batch input shape).
MAX_BATCH_QUEUES = 64


def _stopping_error(what: str) -> ServingError:
    return ServingError(Code.UNAVAILABLE, f"server is stopping: {what}")


def _check_ref(ref: ModelRef) -> None:
    if not ref.name:
        raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    if ref.version is not None and ref.label is not None:
        raise ServingError(Code.INVALID_ARGUMENT, f"Both model version ({ref.version}) and model version "
                                                  f"label ({ref.label}) cannot be supplied.")


def _ref_from_spec(spec: Any) -> ModelRef:
    choice = spec.WhichOneof("version_choice")
    return ModelRef(spec.name, spec.version.value if choice == "version" else None,
                    spec.version_label if choice == "version_label" else None)


class ServingCore:
    """Implements :class:`teeserve.serving._api.ServingCoreAPI`."""

    def __init__(self, model_configs: Sequence[ModelConfig], *, keyring: KeyRing | None = None,
                 options: ServingOptions | None = None, config_file: str | None = None,
                 config_file_poll_wait_seconds: float = 0) -> None:
        self.options = options or ServingOptions()
        self.keyring = keyring if keyring is not None else KeyRing()
        self._initial = list(model_configs)
        self._models: dict[str, ModelManager] = {}
        threads = self.options.inference_threads or max(4, 2 * (os.cpu_count() or 1))
        self._pool = InferencePool(threads)
        self._load_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="teeserve-load")
        self._scheduler: BatchScheduler | None = None
        if self.options.enable_batching:
            self._scheduler = BatchScheduler(self.options.batching or BatchingOptions(), self._pool.submit,
                                             on_batch=self._record_batch)
        self._reload_lock: asyncio.Lock | None = None
        #: Managers that a reload in progress made, replaced or removed and that are not (or no
        #: longer) in ``_models``: stop() must close them too, or they outlive the server.
        self._unpublished: set[ModelManager] = set()
        self._stopping = False
        self._started = False
        self._initial_loaded = False
        self._config_file = config_file
        self._config_poll = config_file_poll_wait_seconds
        self._config_task: asyncio.Task[None] | None = None
        self._config_text: bytes | None = None

    # -- construction helpers -------------------------------------------------------------------

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str], *, keyring: KeyRing | None = None,
                         options: ServingOptions | None = None, poll_wait_seconds: float = 0) -> ServingCore:
        """A core for ``--model_config_file`` (re-read every ``poll_wait_seconds``; 0 = once)."""
        keyring = keyring if keyring is not None else KeyRing()
        configs = read_model_config_file(path, keyring, options.path_map if options is not None else ())
        return cls(configs, keyring=keyring, options=options, config_file=os.fspath(path),
                   config_file_poll_wait_seconds=poll_wait_seconds)

    @classmethod
    def from_flags(cls, flags: Any, *, keyring: KeyRing | None = None, **extra: Any) -> ServingCore:
        """A core from tensorflow_model_server's flags (see the module docstring); ``extra`` are more
        :class:`ServingOptions` fields (e.g. ``path_map``, ``require_encrypted_models``).

        Raises ConfigError (a UsageError) for an inconsistent command line or a bad file.
        """
        keyring = keyring if keyring is not None else KeyRing()

        def g(name: str, default: Any) -> Any:
            value = getattr(flags, name, None)
            return default if value is None else value

        batching = None
        if g("enable_batching", False):
            path = g("batching_parameters_file", "")
            batching = (read_batching_parameters_file(path, keyring, tuple(extra.get("path_map", ())))
                        if path else BatchingOptions())
        tags = g("saved_model_tags", "serve")
        options = ServingOptions(
            file_system_poll_wait_seconds=float(g("file_system_poll_wait_seconds", 1)),
            max_num_load_retries=int(g("max_num_load_retries", 5)),
            load_retry_interval_seconds=float(g("load_retry_interval_micros", 60_000_000)) / 1e6,
            tensorflow_intra_op_parallelism=int(g("tensorflow_intra_op_parallelism", 0)),
            tensorflow_inter_op_parallelism=int(g("tensorflow_inter_op_parallelism", 0)),
            tensorflow_session_parallelism=int(g("tensorflow_session_parallelism", 0)),
            enable_batching=bool(g("enable_batching", False)),
            batching=batching,
            enable_per_model_batching_parameters=bool(g("enable_per_model_batching_parameters", False)),
            enable_signature_method_name_check=bool(g("enable_signature_method_name_check", False)),
            enable_model_warmup=bool(g("enable_model_warmup", True)),
            num_request_iterations_for_warmup=int(g("num_request_iterations_for_warmup", 1)),
            allow_version_labels_for_unavailable_models=bool(
                g("allow_version_labels_for_unavailable_models", False)),
            saved_model_tags=tuple(t for t in (tags if isinstance(tags, str) else ",".join(tags)).split(",")
                                   if t),
            **{"onnx_parallel_execution": g("onnx_execution_mode", "sequential") == "parallel", **extra},
        )
        config_file = g("model_config_file", "")
        if config_file:
            if g("model_name", "") or g("model_base_path", ""):
                log.warning("--model_config_file is set: --model_name/--model_base_path are ignored")
            return cls.from_config_file(config_file, keyring=keyring, options=options,
                                        poll_wait_seconds=float(g("model_config_file_poll_wait_seconds", 0)))
        if not g("model_base_path", ""):
            raise ConfigError("either --model_config_file or --model_base_path must be set")
        return cls(single_model_config(g("model_name", "default"), g("model_base_path", "")),
                   keyring=keyring, options=options)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every configured model (raises ServingError if the config's labels cannot apply)."""
        self._reload_lock = asyncio.Lock()
        self._started = True
        await self._apply(self._initial)
        # Ready only after the first load has run: until then the model table may still be empty.
        self._initial_loaded = True
        if self._config_file and self._config_poll > 0:
            self._config_task = asyncio.get_running_loop().create_task(self._poll_config_file())

    def begin_stop(self) -> None:
        """The server is stopping (a drain has begun): reloads are refused from now on (UNAVAILABLE),
        and loads in progress, a reload's among them, are abandoned rather than waited for; what
        serves keeps serving in-flight requests until :meth:`stop`."""
        self._stopping = True
        for m in self._managers():
            m.stop_loading()

    @property
    def stopping(self) -> bool:
        """True once :meth:`begin_stop` or :meth:`stop` ran: a failed load or reload is then no error."""
        return self._stopping

    def _managers(self) -> list[ModelManager]:
        """Every manager not closed yet: the published ones and those of a reload in progress."""
        return list({id(m): m for m in (*self._models.values(), *self._unpublished)}.values())

    async def stop(self) -> None:
        """Stop polling, end a reload in progress (its loads are abandoned; it then fails with
        UNAVAILABLE), unload every model, shut the thread pools: when this returns, no manager or
        servable of this core is left, whichever reload made it."""
        self.begin_stop()
        if self._reload_lock is not None:
            async with self._reload_lock:  # a reload in progress has ended (it found _stopping)
                await self._stop_config_poll()
        else:
            await self._stop_config_poll()
        managers = self._managers()
        self._models, self._unpublished = {}, set()
        await asyncio.gather(*(m.close() for m in managers))
        self._started = False
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._pool.shutdown)
        # Waits for loading threads still running (abandoned loads close their servables there).
        await loop.run_in_executor(None, self._load_executor.shutdown)

    async def _stop_config_poll(self) -> None:
        """Cancel the --model_config_file poller; called with the reload lock held, so it is never
        cut off halfway through a reload."""
        if self._config_task is not None:
            self._config_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._config_task
            self._config_task = None

    def is_ready(self) -> bool:
        return (self._started and self._initial_loaded and bool(self._models)
                and all(m.available() for m in self._models.values()))

    def model_names(self) -> list[str]:
        return sorted(self._models)

    @property
    def configured_names(self) -> set[str]:
        """The models of the config the core was made with (before any reload)."""
        return {c.name for c in self._initial}

    async def reload_config(self, config: Any) -> None:
        """Replace the model config (a ModelServerConfig proto, its text, or a list of ModelConfig).

        Models missing from the new config are unloaded; new versions load before old ones unload.
        Raises ServingError INVALID_ARGUMENT for an invalid config, FAILED_PRECONDITION for a label
        on a version that is not AVAILABLE (the rest of the config is applied).
        """
        if isinstance(config, list):
            configs = config
        else:
            try:
                configs = parse_model_server_config(config, "ReloadConfigRequest.config")
            except ConfigError as exc:
                raise ServingError(Code.INVALID_ARGUMENT, str(exc)) from None
        await self._apply(configs)

    async def _apply(self, configs: list[ModelConfig]) -> None:
        assert self._reload_lock is not None, "call start() first"
        async with self._reload_lock:
            if self._stopping:
                raise _stopping_error("the model config was not reloaded")
            wanted = {c.name: c for c in configs}
            removed = [self._models.pop(n) for n in list(self._models) if n not in wanted]
            self._unpublished.update(removed)
            replaced: list[ModelManager] = []
            fresh: dict[str, ModelManager] = {}
            for c in configs:
                old = self._models.get(c.name)
                if old is not None and (old.config.base_path, old.config.platform) == (c.base_path, c.platform):
                    old.config = c
                    fresh[c.name] = old
                else:
                    fresh[c.name] = ModelManager(c, self.options, self.keyring, self._load_executor,
                                                 on_load=self._record_load, on_warmup=METRICS.record_warmup)
                    if old is not None:
                        replaced.append(old)  # keeps serving until its successor has loaded
                        self._unpublished.add(fresh[c.name])
                    else:
                        self._models[c.name] = fresh[c.name]  # visible (LOADING) in model_status
            await asyncio.gather(*(m.sync() for m in fresh.values()))
            if self._stopping:
                # stop() began meanwhile and abandoned the loads: nothing more is swapped in; stop()
                # closes every manager, those this reload made (held in _unpublished) too. What the
                # reload did before (models it removed, a kept model's new version policy whose
                # swap finished) stays done, so the caller is told it may be partly applied.
                if not self._initial_loaded:
                    raise _stopping_error("the initial model load was cut short")
                raise _stopping_error("the model config reload was cut short and may be partly applied")
            error: ServingError | None = None
            for name, m in fresh.items():
                err = m.check_labels(wanted[name].version_labels,
                                     allow_unavailable=self.options.allow_version_labels_for_unavailable_models)
                if err is None:
                    m.labels = dict(wanted[name].version_labels)
                else:
                    error = error or err
                self._models[name] = m
                self._unpublished.discard(m)
                m.start_polling()
            self._unpublished.update(replaced)  # out of _models now, until closed
            await asyncio.gather(*(m.close() for m in removed + replaced))
            self._unpublished.difference_update(removed + replaced)
            if error is not None:
                raise error

    async def _poll_config_file(self) -> None:
        assert self._config_file is not None
        while True:
            await asyncio.sleep(self._config_poll)
            try:
                with open(self._config_file, "rb") as f:
                    raw = f.read()
                if raw == self._config_text:
                    continue
                self._config_text = raw
                configs = read_model_config_file(self._config_file, self.keyring, self.options.path_map)
                await self._apply(configs)
            except (ConfigError, ServingError, OSError) as exc:
                if self._stopping:
                    return  # cut short by stop(): not a failure of the file
                log.error("reloading %s failed: %s", self._config_file, exc)

    # -- requests -------------------------------------------------------------------------------

    def _manager(self, ref: ModelRef) -> ModelManager:
        _check_ref(ref)
        m = self._models.get(ref.name)
        if m is None:
            if ref.label is not None:  # TF resolves the label first, and an unknown model has none
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {ref.label}")
            v = ref.version
            what = f"Latest({ref.name})" if v is None else f"Specific({ref.name}, {v})"
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {what}")
        return m

    async def predict(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                      output_filter: Sequence[str] = ()) -> PredictResult:
        m = self._manager(ref)
        with m.acquire(ref) as entry:
            servable = entry.servable
            assert servable is not None
            prep = prepare_predict(servable, signature_name, inputs, output_filter,
                                   check_method=self.options.enable_signature_method_name_check)
            start = time.perf_counter()
            key = batch_key(prep.signature_name, prep.inputs, prep.output_aliases) \
                if self._scheduler is not None and prep.batch_size else None
            queue = entry.batch_queues.get(key) if key is not None else None
            if key is not None and queue is None and len(entry.batch_queues) >= MAX_BATCH_QUEUES:
                key = None  # a client sending ever new shapes must not grow the queue table without bound
            if key is not None and self._scheduler is not None:
                if queue is None:
                    sig = prep.signature_name
                    queue = self._scheduler.queue(
                        ref.name,
                        lambda merged, aliases, _s=servable, _sig=sig: _s.run(_sig, merged, aliases),
                        prep.output_aliases, entry.batching)
                    entry.batch_queues[key] = queue
                outputs = await queue.submit(prep.inputs, prep.batch_size)
            else:
                # Object arrays (strings) hold their bytes outside nbytes: those always go to the pool.
                nbytes = sum(a.nbytes for a in prep.inputs.values())
                on_loop = nbytes <= INLINE_MAX_BYTES and entry.estimate(nbytes) < INLINE_RUN_S and \
                    not any(a.dtype.hasobject for a in prep.inputs.values())
                if on_loop:
                    outputs, took = _timed_run(servable, prep.signature_name, prep.inputs, prep.output_aliases)
                else:
                    outputs, took = await self._pool.submit(_timed_run, servable, prep.signature_name,
                                                            prep.inputs, prep.output_aliases)
                entry.note_run(took, nbytes, on_loop=on_loop)
            METRICS.record_runtime(ref.name, "Predict", servable.runtime, time.perf_counter() - start)
            return PredictResult(ref.name, entry.number, prep.signature_name,
                                 {a: outputs[a] for a in prep.output_aliases})

    @property
    def blocking_predict(self) -> bool:
        """True when :meth:`predict_blocking` may be used (no batching: batches form on the event loop)."""
        return self._scheduler is None

    def predict_blocking(self, ref: ModelRef, signature_name: str, inputs: Mapping[str, np.ndarray],
                         output_filter: Sequence[str] = ()) -> PredictResult:
        """:meth:`predict` for a caller that is already on a worker thread (gRPC's thread-pool server),
        never on the event loop: the servable runs in the calling thread, which saves the hand-off to
        the inference pool and back (for a small model that hand-off costs more than the model).
        Thread-safe; only while :attr:`blocking_predict` is true."""
        if self._scheduler is not None:
            raise RuntimeError("predict_blocking is not available with batching enabled")
        m = self._manager(ref)
        with m.acquire(ref) as entry:
            servable = entry.servable
            assert servable is not None
            prep = prepare_predict(servable, signature_name, inputs, output_filter,
                                   check_method=self.options.enable_signature_method_name_check)
            outputs, took = _timed_run(servable, prep.signature_name, prep.inputs, prep.output_aliases)
            METRICS.record_runtime(ref.name, "Predict", servable.runtime, took)
            return PredictResult(ref.name, entry.number, prep.signature_name,
                                 {a: outputs[a] for a in prep.output_aliases})

    async def classify(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        return await self._example_api(ref, signature_name, input_proto, run_classify, "Classify")

    async def regress(self, ref: ModelRef, signature_name: str, input_proto: Any) -> tuple[str, int, Any]:
        return await self._example_api(ref, signature_name, input_proto, run_regress, "Regress")

    async def _example_api(self, ref: ModelRef, signature_name: str, input_proto: Any, fn: Any,
                           api: str) -> tuple[str, int, Any]:
        m = self._manager(ref)
        with m.acquire(ref) as entry:
            servable = entry.servable
            assert servable is not None
            start = time.perf_counter()
            _key, result = await self._pool.submit(
                functools.partial(fn, servable, signature_name, input_proto,
                                  check_method=self.options.enable_signature_method_name_check))
            METRICS.record_runtime(ref.name, api, servable.runtime, time.perf_counter() - start)
            METRICS.record_examples(ref.name, example_count(input_proto))
            return ref.name, entry.number, result

    async def multi_inference(self, request: Any) -> Any:
        """MultiInference over tf.Examples (classify/regress tasks on one model and version)."""
        req = request if isinstance(request, pb.MultiInferenceRequest) else \
            pb.MultiInferenceRequest.FromString(request.SerializeToString())
        if not req.tasks:
            raise ServingError(Code.INVALID_ARGUMENT, "MultiInferenceRequest must have at least one task.")
        names = {t.model_spec.name for t in req.tasks}
        if len(names) != 1:
            raise ServingError(Code.INVALID_ARGUMENT,
                               "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        seen: set[str] = set()
        plan = []
        for t in req.tasks:
            sig = t.model_spec.signature_name or "serving_default"
            if sig in seen:
                raise ServingError(Code.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {sig}")
            seen.add(sig)
            if t.method_name == CLASSIFY_METHOD:
                plan.append((t, run_classify))
            elif t.method_name == REGRESS_METHOD:
                plan.append((t, run_regress))
            else:
                raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {t.method_name}")
        ref = _ref_from_spec(req.tasks[0].model_spec)
        m = self._manager(ref)
        with m.acquire(ref) as entry:
            servable = entry.servable
            assert servable is not None

            check = self.options.enable_signature_method_name_check

            def run_all() -> Any:
                resp = pb.MultiInferenceResponse()
                for t, fn in plan:
                    key, result = fn(servable, t.model_spec.signature_name, req.input, check_method=check,
                                     multi=True)
                    r = resp.results.add()
                    r.model_spec.name = ref.name
                    r.model_spec.version.value = entry.number
                    r.model_spec.signature_name = key
                    if fn is run_classify:
                        r.classification_result.CopyFrom(result)
                    else:
                        r.regression_result.CopyFrom(result)
                return resp

            start = time.perf_counter()
            resp = await self._pool.submit(run_all)
            METRICS.record_runtime(ref.name, "MultiInference", servable.runtime, time.perf_counter() - start)
            METRICS.record_examples(ref.name, example_count(req.input))
            return resp

    def signatures(self, ref: ModelRef) -> tuple[str, int, Mapping[str, Signature]]:
        m = self._manager(ref)
        entry = m.resolve(ref)
        assert entry.servable is not None
        return ref.name, entry.number, entry.servable.signatures

    def model_status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        if not name:
            raise ServingError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        if version is not None and label is not None:
            raise ServingError(Code.INVALID_ARGUMENT, f"Both model version ({version}) and model version "
                                                      f"label ({label}) cannot be supplied.")
        m = self._models.get(name)
        if m is None:  # TensorFlow Serving's messages, which depend on what the request names
            if label is not None:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            if version is not None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return m.status(version, label)

    def available_versions(self, name: str) -> list[int]:
        m = self._models.get(name)
        return [] if m is None else m.available()

    # -- metrics hooks --------------------------------------------------------------------------

    @staticmethod
    def _record_load(path: str, status: str, seconds: float) -> None:
        METRICS.record_load(path, status, seconds)

    @staticmethod
    def _record_batch(name: str, size: int, padded: int, queued_seconds: float) -> None:
        METRICS.record_batch(name, size, padded - size, queued_seconds)


