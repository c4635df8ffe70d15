"""Model server configuration: model configs, version policies, batching parameters, core options.

Strategy: the wire/text formats are TensorFlow Serving's own protos (``ModelServerConfig``,
``BatchingParameters``, text format); they are parsed once into small frozen dataclasses that the
manager and the batcher use. Every validation error is a :class:`ConfigError` (a ``UsageError``)
whose message names the file or field; :func:`config_error_to_serving` turns it into the
INVALID_ARGUMENT a reload request gets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format

from .._errors import TeeserveError, UsageError
from .._proto import pb
from ._types import Code, ServingError

__all__ = [
    "ConfigError",
    "VersionPolicy",
    "ModelConfig",
    "BatchingOptions",
    "ServingOptions",
    "parse_model_server_config",
    "read_model_config_file",
    "parse_batching_parameters",
    "read_batching_parameters_file",
    "single_model_config",
]


class ConfigError(UsageError):
    """A model config or batching parameters file (or proto) is invalid."""


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """``ServableVersionPolicy``: ``latest`` (the N highest), ``all`` or ``specific`` versions."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> set[int]:
        """The aspired versions among the version numbers found on disk."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions) & set(available)
        return set(sorted(available)[-self.num_versions:]) if available else set()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    base_path: str
    platform: str = "tensorflow"
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    version_labels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """``BatchingParameters`` with TensorFlow Serving's defaults (tf-serving-api.md §4)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()

    def padded_size(self, n: int) -> int:
        for size in self.allowed_batch_sizes:
            if size >= n:
                return size
        return n


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """Everything the core takes from tensorflow_model_server's flags and teeserve's own options.

    ``path_map`` rewrites served path prefixes to the host prefixes protected files were bound to
    (see :mod:`teeserve.serving._secrets`). ``require_encrypted_models`` refuses plaintext model files.
    ``enable_per_model_batching_parameters``: a version directory's ``batching_params.pbtxt`` (plain or
    protected) replaces the server's batching parameters for that version (with ``enable_batching``).
    """

    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_parallelism: int = 0
    enable_batching: bool = False
    batching: BatchingOptions | None = None
    enable_per_model_batching_parameters: bool = False
    enable_signature_method_name_check: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: tuple[str, ...] = ("serve",)
    key_name: str = "default"
    #: ``--model-key MODEL=KEY``: models whose files are encrypted with another key than ``key_name``
    #: (e.g. one key per model owner, each released by the broker as its own secret).
    model_keys: tuple[tuple[str, str], ...] = ()
    path_map: tuple[tuple[str, str], ...] = ()
    require_encrypted_models: bool = False
    inference_threads: int = 0  # 0 = max(4, 2 x cores)
    #: ``--onnx-execution-mode``: ONNX Runtime runs independent nodes at once (ORT_PARALLEL, on the
    #: inter-op threads) only when asked. TensorFlow's inter-op pool costs nothing on a chain of ops;
    #: ORT's parallel executor made ResNet-50 2.4x slower, so the reference deployment's
    #: ``--tensorflow_inter_op_parallelism=2`` alone does not switch it on.
    onnx_parallel_execution: bool = False

    @property
    def intra_op_threads(self) -> int:
        return self.tensorflow_intra_op_parallelism or self.tensorflow_session_parallelism

    @property
    def inter_op_threads(self) -> int:
        return self.tensorflow_inter_op_parallelism or self.tensorflow_session_parallelism


def single_model_config(name: str, base_path: str) -> list[ModelConfig]:
    """``--model_name``/``--model_base_path`` mode."""
    if not name:
        raise ConfigError("--model_name must not be empty")
    if not base_path:
        raise ConfigError("--model_base_path must not be empty")
    return [ModelConfig(name=name, base_path=base_path)]


def _policy(msg: Any, where: str) -> VersionPolicy:
    if not msg.HasField("model_version_policy"):
        return VersionPolicy()
    p = msg.model_version_policy
    kind = p.WhichOneof("policy_choice")
    if kind is None or kind == "latest":
        n = p.latest.num_versions if kind else 1
        if n < 0:
            raise ConfigError(f"{where}: latest.num_versions must be positive, got {n}")
        return VersionPolicy("latest", n or 1)
    if kind == "all":
        return VersionPolicy("all")
    versions = tuple(sorted(set(p.specific.versions)))
    if not versions:
        raise ConfigError(f"{where}: the specific version policy lists no versions")
    return VersionPolicy("specific", versions=versions)


def parse_model_server_config(config: Any, source: str = "model config") -> list[ModelConfig]:
    """Validate a ``ModelServerConfig`` (vendored proto, official proto, or text format).

    Only ``model_config_list`` is supported; names must be non-empty and unique.
    """
    if isinstance(config, (str, bytes)):
        try:
            msg = text_format.Parse(config if isinstance(config, str) else config.decode("utf-8"),
                                    pb.ModelServerConfig())
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: not a text-format ModelServerConfig: {exc}") from exc
    elif type(config).__name__ == "ModelServerConfig" and getattr(config, "DESCRIPTOR", None) is not None:
        msg = pb.ModelServerConfig.FromString(config.SerializeToString())
    else:
        raise TypeError("expected a ModelServerConfig or its text format")
    kind = msg.WhichOneof("config")
    if kind != "model_config_list":
        raise ConfigError(f"{source}: only model_config_list is supported (got {kind or 'an empty config'})")
    out: list[ModelConfig] = []
    seen: set[str] = set()
    for i, c in enumerate(msg.model_config_list.config):
        where = f"{source}: config[{i}]"
        if not c.name:
            raise ConfigError(f"{where}: model name is empty")
        if c.name in seen:
            raise ConfigError(f"{where}: duplicate model name {c.name!r}")
        if not c.base_path:
            raise ConfigError(f"{where} ({c.name}): base_path is empty")
        platform = c.model_platform or "tensorflow"
        if platform not in ("tensorflow", "onnx"):
            raise ConfigError(f"{where} ({c.name}): unsupported model_platform {platform!r} "
                              "(teeserve serves 'tensorflow' and 'onnx')")
        if c.HasField("logging_config"):
            # TF Serving's request logger writes sampled requests and responses to files: on a TEE
            # host, model inputs and outputs on the host's disk. Refused rather than silently dropped.
            raise ConfigError(f"{where} ({c.name}): logging_config is not supported (request logging would "
                              "write model inputs and outputs to the host's disk)")
        seen.add(c.name)
        labels = {k: int(v) for k, v in c.version_labels.items()}
        out.append(ModelConfig(c.name, c.base_path, platform, _policy(c, f"{where} ({c.name})"), labels))
    return out


def read_model_config_file(path: str | os.PathLike[str], keyring: Any = None,
                           path_map: tuple[tuple[str, str], ...] = ()) -> list[ModelConfig]:
    """Read ``--model_config_file`` (a protected file is decrypted with ``keyring`` if given; its bound
    path is checked through ``--path-map`` as for model files)."""
    data = _read_config_bytes(path, keyring, path_map)
    return parse_model_server_config(data, os.fspath(path))


def _read_config_bytes(path: str | os.PathLike[str], keyring: Any,
                       path_map: tuple[tuple[str, str], ...] = ()) -> bytes:
    try:
        if keyring is not None:
            return keyring.read_maybe_protected(path, path_map=path_map)[0]
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: {exc.strerror or exc}") from exc
    except TeeserveError as exc:  # a protected file that does not decrypt (wrong key, path, tampered)
        raise ConfigError(str(exc)) from exc


def parse_batching_parameters(config: Any, source: str = "batching parameters") -> BatchingOptions:
    """Validate a ``BatchingParameters`` (proto or text format) into :class:`BatchingOptions`."""
    if isinstance(config, (str, bytes)):
        try:
            msg = text_format.Parse(config if isinstance(config, str) else config.decode("utf-8"),
                                    pb.BatchingParameters())
        except (text_format.ParseError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: not a text-format BatchingParameters: {exc}") from exc
    else:
        msg = pb.BatchingParameters.FromString(config.SerializeToString())
    d = BatchingOptions()
    mbs = msg.max_batch_size.value if msg.HasField("max_batch_size") else d.max_batch_size
    timeout = msg.batch_timeout_micros.value if msg.HasField("batch_timeout_micros") else d.batch_timeout_micros
    meb = msg.max_enqueued_batches.value if msg.HasField("max_enqueued_batches") else d.max_enqueued_batches
    nbt = msg.num_batch_threads.value if msg.HasField("num_batch_threads") else d.num_batch_threads
    allowed = tuple(msg.allowed_batch_sizes)
    for name, value in (("max_batch_size", mbs), ("max_enqueued_batches", meb), ("num_batch_threads", nbt)):
        if value <= 0:
            raise ConfigError(f"{source}: {name} must be positive, got {value}")
    if timeout < 0:
        raise ConfigError(f"{source}: batch_timeout_micros must not be negative, got {timeout}")
    if allowed:
        if any(b <= 0 for b in allowed) or any(b2 <= b1 for b1, b2 in zip(allowed, allowed[1:])):
            raise ConfigError(f"{source}: allowed_batch_sizes entries must be positive and "
                              "monotonically increasing")
        if allowed[-1] != mbs:
            raise ConfigError(f"{source}: final entry in allowed_batch_sizes must equal max_batch_size "
                              f"({allowed[-1]} != {mbs})")
    return BatchingOptions(mbs, timeout, meb, nbt, allowed)


def read_batching_parameters_file(path: str | os.PathLike[str], keyring: Any = None,
                                  path_map: tuple[tuple[str, str], ...] = ()) -> BatchingOptions:
    return parse_batching_parameters(_read_config_bytes(path, keyring, path_map), os.fspath(path))


def config_error_to_serving(exc: ConfigError) -> ServingError:
    return ServingError(Code.INVALID_ARGUMENT, str(exc))
