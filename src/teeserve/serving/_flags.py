"""``teeserve serve``'s command line: tensorflow_model_server's flags, plus teeserve's own options.

Strategy: TensorFlow Serving's flags keep their exact names (``--model_base_path``, with
underscores), defaults and meanings (tf-serving-api.md §8), so a deployment's start command works
with only the program name changed. Both ``--flag=value`` and ``--flag value`` are accepted;
booleans take ``--flag``, ``--flag=true`` / ``--flag=false`` (also 1/0, yes/no, t/f, as TensorFlow's
parser does). Unknown flags are a usage error (exit 2); abbreviations are not accepted.

Each TF flag is in one of three groups, and the ``--help`` text says which:

- **honoured**: it does what it does in TensorFlow Serving;
- **accepted**: it is parsed and has nothing to do here (``--flush_filesystem_caches``: models are
  decrypted into memory, so there is no file-system cache to flush; ``--enable_grpc_healthcheck_service``:
  the health service is always on);
- **unsupported**: a feature teeserve does not have (ALTS, TFLite, GPUs, ...). The flag is accepted at
  its TensorFlow default, so command lines that spell the default out still work, and any other
  value is a usage error rather than a silently ignored setting.

teeserve's own options use teeserve's style (``--wrap-key``, ``--log-format``). The attestation options
(``--tee``, ``--key-broker``, ...) belong to the key-broker work and slot in next to ``--wrap-key``.

This module is pure: it turns argv into a frozen :class:`ServerOptions` and reads no files.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

from .._errors import UsageError
from ._eventloop import EVENT_LOOPS, loop_factory

#: ``--onnx-execution-mode`` values: ONNX Runtime's ExecutionMode (ORT_SEQUENTIAL, ORT_PARALLEL).
ONNX_EXECUTION_MODES = ("sequential", "parallel")

#: ``--grpc-server`` values (see :meth:`ServerOptions.grpc_server_kind`).
GRPC_SERVERS = ("auto", "aio", "threads")

__all__ = [
    "ServerOptions",
    "add_serve_arguments",
    "build_serve_parser",
    "options_from_args",
    "parse_serve_args",
    "parse_bool",
    "parse_channel_arguments",
    "DEFAULT_HOST",
]

#: Bind address. Like TensorFlow Serving (which listens on all interfaces) so the server is reachable
#: in a container with published ports; pass ``--host 127.0.0.1`` for a local-only server.
DEFAULT_HOST = "0.0.0.0"

_CPUS = os.cpu_count() or 1

_TRUE = {"1", "t", "true", "y", "yes"}
_FALSE = {"0", "f", "false", "n", "no"}


def parse_bool(text: str) -> bool:
    """A boolean flag value as TensorFlow's flag parser reads it (case-insensitive)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {value}")
    return value


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments``: comma-separated ``key=value`` gRPC arguments (integers where the
    value is one), e.g. ``grpc.max_connection_age_ms=2000,grpc.keepalive_time_ms=10000``."""
    out: list[tuple[str, int | str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            out.append((key, int(value)))
        except ValueError:
            out.append((key, value))
    return out


# (name, type, default, group, help). group: "honoured" | "accepted" | "unsupported".
_B, _I, _S, _F = "bool", "int", "str", "float"
_TF_FLAGS: tuple[tuple[str, str, Any, str, str], ...] = (
    ("port", _I, 8500, "honoured", "gRPC port (0 = no gRPC on TCP)"),
    ("grpc_socket_path", _S, "", "honoured", "also serve gRPC on this UNIX socket (same TLS as --port)"),
    ("rest_api_port", _I, 0, "honoured", "REST port (0 = no REST); must differ from --port"),
    ("rest_api_num_threads", _I, 4 * _CPUS, "honoured", "REST threads decoding large JSON bodies (4 x CPUs)"),
    ("rest_api_timeout_in_ms", _I, 30000, "honoured", "REST request timeout in milliseconds"),
    ("rest_api_enable_cors_support", _B, False, "honoured", "add CORS headers to REST responses"),
    ("grpc_max_threads", _I, 2 * _CPUS, "honoured",
     "gRPC worker threads (Predict runs in them): the most gRPC calls in progress at once; "
     "more wait their turn (2 x CPUs; TF Serving's 4 x CPUs made small requests ~15%% slower here: "
     "more threads fight over the GIL)"),
    ("grpc_channel_arguments", _S, "", "honoured",
     "gRPC server arguments, comma-separated key=value (e.g. grpc.max_connection_age_ms=2000)"),
    ("model_name", _S, "default", "honoured", "name of the model (single-model mode)"),
    ("model_base_path", _S, "", "honoured", "directory holding the model's numbered versions"),
    ("model_config_file", _S, "", "honoured",
     "ModelServerConfig text file (multi-model); replaces --model_name/--model_base_path"),
    ("model_config_file_poll_wait_seconds", _I, 0, "honoured",
     "re-read --model_config_file this often (0 = read once)"),
    ("file_system_poll_wait_seconds", _I, 1, "honoured",
     "poll base paths for new versions this often (0 = once at start, negative = never)"),
    ("max_num_load_retries", _I, 5, "honoured", "retries of a failed version load"),
    ("load_retry_interval_micros", _I, 60_000_000, "honoured", "wait between load retries"),
    ("num_load_threads", _I, 0, "accepted", "accepted; versions load on teeserve's own small load pool"),
    ("num_unload_threads", _I, 0, "accepted", "accepted; versions unload on the event loop"),
    ("enable_batching", _B, False, "honoured", "batch concurrent requests server-side"),
    ("batching_parameters_file", _S, "", "honoured", "BatchingParameters text file"),
    ("enable_per_model_batching_parameters", _B, False, "honoured",
     "read batching_params.pbtxt from each model version directory"),
    ("tensorflow_session_parallelism", _I, 0, "honoured", "threads per session (0 = auto)"),
    ("tensorflow_intra_op_parallelism", _I, 0, "honoured", "threads within one op (0 = auto)"),
    ("tensorflow_inter_op_parallelism", _I, 0, "honoured", "ops run in parallel (0 = auto)"),
    ("enable_model_warmup", _B, True, "honoured", "replay assets.extra/tf_serving_warmup_requests"),
    ("num_request_iterations_for_warmup", _I, 1, "honoured", "times each warmup record is replayed"),
    ("ssl_config_file", _S, "", "honoured",
     "SSLConfig text file (plain, or a Gramine protected file opened with --wrap-key); secures gRPC "
     "and REST, client_verify: true = mutual TLS on both"),
    ("monitoring_config_file", _S, "", "honoured",
     "MonitoringConfig text file (prometheus_config { enable: true path: ... }); served on the REST port"),
    ("allow_version_labels_for_unavailable_models", _B, False, "honoured",
     "allow new labels to point at versions that are not yet available"),
    ("saved_model_tags", _S, "serve", "honoured", "SavedModel MetaGraph tags, comma-separated"),
    ("enable_signature_method_name_check", _B, False, "honoured",
     "check signature method names for Classify/Regress"),
    ("enable_grpc_healthcheck_service", _B, False, "accepted",
     "accepted; teeserve's grpc.health.v1 service is always on"),
    ("flush_filesystem_caches", _B, True, "accepted",
     "accepted; models are decrypted into memory, there is no file cache to flush"),
    ("enable_profiler", _B, True, "accepted", "accepted; teeserve has no profiler service"),
    ("remove_unused_fields_from_bundle_metagraph", _B, True, "accepted", "accepted"),
    ("enable_serialization_as_tensor_content", _B, False, "honoured",
     "gRPC Predict outputs as raw tensor_content instead of the typed *_val fields"),
    ("use_alts_credentials", _B, False, "unsupported", "unsupported (ALTS)"),
    ("platform_config_file", _S, "", "unsupported", "unsupported"),
    ("tensorflow_session_config_file", _S, "", "unsupported", "unsupported"),
    ("per_process_gpu_memory_fraction", _F, 0.0, "unsupported", "unsupported (no GPUs in a TEE)"),
    ("prefer_tflite_model", _B, False, "unsupported", "unsupported (TFLite)"),
    ("num_tflite_pools", _I, 1, "unsupported", "unsupported (TFLite)"),
    ("num_tflite_interpreters_per_pool", _I, 1, "unsupported", "unsupported (TFLite)"),
    ("thread_pool_factory_config_file", _S, "", "unsupported", "unsupported"),
    ("mixed_precision", _S, "", "unsupported", "unsupported"),
    ("xla_cpu_compilation_enabled", _B, False, "unsupported", "unsupported"),
)

_TYPES = {_I: _int, _S: str, _F: _float}


@dataclass(frozen=True)
class ServerOptions:
    """Everything ``teeserve serve`` was asked to do, checked for consistency, no files read yet."""

    # Where and how to listen.
    host: str = DEFAULT_HOST
    port: int = 8500
    grpc_socket_path: str = ""
    rest_api_port: int = 0
    rest_api_num_threads: int = 4 * _CPUS
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    grpc_max_threads: int = 2 * _CPUS
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    ssl_config_file: str = ""
    monitoring_config_file: str = ""
    # What to serve.
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    saved_model_tags: str = "serve"
    enable_signature_method_name_check: bool = False
    # How to run it.
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    enable_serialization_as_tensor_content: bool = False
    # teeserve's own.
    wrap_key_file: str = ""
    path_map: tuple[tuple[str, str], ...] = ()
    model_keys: tuple[tuple[str, str], ...] = ()
    ssl_config_key: str = "default"
    require_encrypted: bool = False
    drain_timeout: float = 20.0
    workers: int = 1
    event_loop: str = "auto"
    grpc_server: str = "auto"
    onnx_execution_mode: str = "sequential"
    worker_cpu_affinity: str = "none"
    worker_connection_balance: str = "hash"
    log_format: str = "text"
    log_level: str = "info"
    # Attestation: obtain the keys from a key broker before anything is decrypted.
    tee: str = "auto"
    key_broker: str = ""
    key_broker_ca: str = ""
    secrets: tuple[str, ...] = ()
    sim_key: str = ""
    key_broker_timeout: float = 300.0
    #: TF flags given on the command line that teeserve accepts but that have no effect here.
    accepted_only: tuple[str, ...] = field(default=())

    @property
    def plaintext(self) -> bool:
        return not self.ssl_config_file

    @property
    def grpc_server_kind(self) -> str:
        """``aio`` or ``threads``: what ``--grpc-server`` picks for this process. ``auto`` takes the one
        measured faster for the process count (docs/serving.md, "Several workers"): grpc.aio for one
        serving process, gRPC's thread-pool server for each of several ``--workers``."""
        if self.grpc_server != "auto":
            return self.grpc_server
        return "threads" if self.workers > 1 else "aio"

    def measured_config(self) -> bytes:
        """The configuration bytes the simulated TEE measures together with the code.

        Everything that decides what this server does is included (as Gramine measures the manifest,
        with its command line and environment), so the same command line gives the same measurement
        and ``teeserve serve ... --print-measurement`` tells the policy author what to pin. Only the
        log settings and the capacity options (``--workers``, ``--event-loop``, ``--grpc-server``,
        ``--onnx-execution-mode``, ``--worker-cpu-affinity``, ``--worker-connection-balance``) are left
        out: they change no behaviour that matters to the model owner.
        """
        import json
        from dataclasses import asdict

        d = asdict(self)
        # --workers, --event-loop, --grpc-server, --onnx-execution-mode, --worker-cpu-affinity and
        # --worker-connection-balance change capacity, not what is served.
        for volatile in ("log_format", "log_level", "accepted_only", "key_broker_timeout", "workers",
                         "event_loop", "grpc_server", "onnx_execution_mode", "worker_cpu_affinity",
                         "worker_connection_balance"):
            d.pop(volatile, None)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Add TensorFlow Serving's flags and teeserve's own options to ``p``."""
    tf = p.add_argument_group(
        "TensorFlow Serving flags",
        "Same names, defaults and meanings as tensorflow_model_server; --flag=value or --flag value; "
        "booleans as --flag, --flag=true or --flag=false.",
    )
    for name, kind, default, group, text in _TF_FLAGS:
        if group == "unsupported":
            text = f"{text}; only its default ({_show(default)}) is accepted"
        else:
            text = f"{text} (default: {_show(default)})"
        if kind == _B:
            tf.add_argument(
                f"--{name}", dest=name, nargs="?", const=True, default=None, type=parse_bool,
                metavar="BOOL", help=text,
            )
        else:
            metavar = "PORT" if name.endswith("port") else {"int": "N", "str": "VALUE", "float": "X"}[kind]
            tf.add_argument(
                f"--{name}", dest=name, default=None, type=_port if name.endswith("_port") or name == "port"
                else _TYPES[kind], metavar=metavar, help=text,
            )
    own = p.add_argument_group("teeserve options")
    own.add_argument(
        "--host", default=DEFAULT_HOST, metavar="ADDR",
        help=f"address to bind the gRPC and REST ports to (default: {DEFAULT_HOST}, all interfaces, as "
        "TensorFlow Serving; 127.0.0.1 for local use only)",
    )
    own.add_argument(
        "--wrap-key", dest="wrap_key_file", default="", metavar="FILE",
        help="wrap key (16 raw bytes or 32 hex characters) for Gramine protected files: the 'default' "
        "key, used for encrypted models and an encrypted --ssl_config_file",
    )
    own.add_argument(
        "--path-map", dest="path_map", action="append", default=[], metavar="SERVED=BOUND",
        help="protected files carry the path they were encrypted for: a file opened under SERVED must be "
        "bound to the same path under BOUND (e.g. /models=models when 'teeserve encrypt -o models/...' "
        "was run on the owner's machine); repeatable, first match wins",
    )
    own.add_argument(
        "--model-key", dest="model_keys", action="append", default=[], metavar="MODEL=KEY",
        help="decrypt model MODEL with the wrap key named KEY instead of 'default' (e.g. one key per "
        "model owner, each obtained with --secret KEY); repeatable",
    )
    own.add_argument(
        "--ssl-config-key", dest="ssl_config_key", default="default", metavar="KEY",
        help="decrypt an encrypted --ssl_config_file with the wrap key named KEY (default: 'default'), "
        "e.g. when the TLS material belongs to the operator and each model to its own owner",
    )
    own.add_argument(
        "--require-encrypted", dest="require_encrypted", nargs="?", const=True, default=False, type=parse_bool,
        metavar="BOOL", help="refuse model files, and an --ssl_config_file, that are not Gramine protected files "
        "(default: false)",
    )
    own.add_argument(
        "--drain-timeout", type=_float, default=20.0, metavar="SECONDS",
        help="on SIGTERM/SIGINT, stop accepting requests and give in-flight ones this long to finish "
        "before exiting (default: 20, inside Kubernetes' default 30 s grace period)",
    )
    own.add_argument(
        "--workers", default="1", metavar="N|auto",
        help="serving processes sharing the gRPC and REST ports (SO_REUSEPORT); one Python process runs "
        "on one core at a time, so N > 1 uses more cores: keys are obtained once (one attestation) and "
        "handed to the workers over a pipe; auto = the CPUs this process may use (default: 1)",
    )
    own.add_argument(
        "--worker-cpu-affinity", dest="worker_cpu_affinity", choices=("none", "auto"), default="none",
        help="with --workers N: auto splits the CPUs this process may use into N shares and pins worker i "
        "(every thread of it) to the i-th (one CPU each with one worker per core; round robin when there "
        "are more workers than CPUs), as nginx's worker_cpu_affinity auto; for a host or VM given "
        "over to serving, with one worker per core (more requests/s and a shorter latency tail here). "
        "none lets the kernel move them; one serving process is never pinned (default: none)",
    )
    own.add_argument(
        "--worker-connection-balance", dest="worker_connection_balance", choices=("hash", "round-robin"),
        default="hash",
        help="with --workers N: how new connections are dealt to the workers. hash: the kernel picks one "
        "by a hash of the addresses and ports (at random: 16 connections over 2 workers split 11+5 or "
        "worse one time in five, and the busier worker makes the latency tail); round-robin: to each "
        "worker in turn, by a small eBPF program on the shared port (Linux 5.12+; needs CAP_BPF or root, "
        "refused at start otherwise; not under Gramine) (default: hash)",
    )
    own.add_argument(
        "--event-loop", dest="event_loop", choices=EVENT_LOOPS, default="auto",
        help="the asyncio event loop: uvloop (libuv; about 12%% less CPU per small REST request here), "
        "asyncio (the standard library's), or auto = uvloop when it can be imported and works here, else "
        "asyncio with a warning (default: auto)",
    )
    own.add_argument(
        "--grpc-server", dest="grpc_server", choices=GRPC_SERVERS, default="auto",
        help="the gRPC server: aio (grpc.aio on the event loop; small models run on the loop, others in "
        "the inference threads), threads (gRPC's thread-pool server; Predict runs in its "
        "--grpc_max_threads threads), or auto = aio with one serving process, threads with --workers > 1, "
        "the faster of the two in each case here (default: auto)",
    )
    own.add_argument(
        "--onnx-execution-mode", dest="onnx_execution_mode", choices=ONNX_EXECUTION_MODES, default="sequential",
        help="how ONNX Runtime runs a graph's nodes: sequential (one after the other, each using the "
        "--tensorflow_intra_op_parallelism threads), or parallel (independent nodes at once on "
        "--tensorflow_inter_op_parallelism threads; only models with wide parallel branches gain, and "
        "ResNet-50 ran 2.4x slower here). TensorFlow models ignore it (default: sequential)",
    )
    att = p.add_argument_group(
        "attestation",
        "Obtain the wrap key(s) from a teeserve key broker (or Gramine's secret-provisioning server) by "
        "remote attestation before anything is decrypted. Without --key-broker, Gramine's variables "
        "SECRET_PROVISION_SERVERS and SECRET_PROVISION_CA_CHAIN_PATH are used when set.",
    )
    att.add_argument(
        "--tee", choices=("auto", "gramine", "tdx", "sim"), default="auto",
        help="evidence provider: gramine (/dev/attestation), tdx (configfs-tsm, also SEV-SNP), sim (the "
        "simulated TEE, accepted only by policies that allow simulation); auto picks gramine or tdx when "
        "their interface exists, else sim (default: auto)",
    )
    att.add_argument("--key-broker", default="", metavar="HOST:PORT[,HOST:PORT...]",
                     help="the key broker(s) to attest to, tried in order")
    att.add_argument("--key-broker-ca", default="", metavar="FILE",
                     help="CA certificate the broker's certificate must chain to (its host name is checked)")
    att.add_argument("--secret", dest="secrets", action="append", default=[], metavar="NAME",
                     help="secret to obtain, installed as the wrap key of that name; repeatable "
                     "(default: default)")
    att.add_argument("--sim-key", default="", metavar="FILE",
                     help="with --tee sim: the simulation signing key made by 'teeserve sim init'")
    att.add_argument("--key-broker-timeout", type=_float, default=300.0, metavar="SECONDS",
                     help="keep retrying an unreachable broker this long before giving up (default: 300)")
    att.add_argument("--print-measurement", action="store_true",
                     help="print the measurement this server would attest with (with --tee sim: over the "
                     "installed code and this command line) and exit; pin it in the broker's policy")
    own.add_argument(
        "--log-format", choices=("text", "json"), default="text",
        help="log lines as text or as JSON objects, one per line (default: text)",
    )
    own.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info",
        help="least severe log level printed (default: info)",
    )


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "none"
    return str(value)


def build_serve_parser(prog: str = "teeserve serve") -> argparse.ArgumentParser:
    """A stand-alone parser for the serve options (the CLI adds the same arguments to its subparser)."""
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    add_serve_arguments(p)
    return p


def options_from_args(ns: argparse.Namespace) -> ServerOptions:
    """Check the parsed flags against each other and build :class:`ServerOptions`.

    Raises:
        UsageError: an unsupported flag with a non-default value, --port equal to --rest_api_port,
            no model given, negative counts, and similar contradictions.
    """
    values: dict[str, Any] = {}
    accepted: list[str] = []
    for name, _kind, default, group, _text in _TF_FLAGS:
        given = getattr(ns, name, None)
        if group == "unsupported":
            if given is not None and given != default:
                raise UsageError(f"--{name}={_show(given)}: teeserve does not support this flag (only its "
                                 f"default, {_show(default)}, is accepted)")
            continue
        if group == "accepted":
            if given is not None:
                accepted.append(name)
            continue
        values[name] = default if given is None else given
    values["grpc_channel_arguments"] = tuple(parse_channel_arguments(values["grpc_channel_arguments"]))
    if values["port"] == 0 and not values["grpc_socket_path"] and values["rest_api_port"] == 0:
        raise UsageError("nothing to serve on: --port is 0 and neither --grpc_socket_path nor "
                         "--rest_api_port is given")
    if values["port"] and values["port"] == values["rest_api_port"]:
        raise UsageError(f"--port and --rest_api_port cannot be the same ({values['port']})")
    if not values["model_config_file"] and not values["model_base_path"]:
        raise UsageError("no model to serve: give --model_base_path (with --model_name) or --model_config_file")
    if not values["model_name"] and not values["model_config_file"]:
        raise UsageError("--model_name is empty")
    for name in ("rest_api_num_threads", "rest_api_timeout_in_ms", "grpc_max_threads",
                 "num_request_iterations_for_warmup"):
        if values[name] <= 0:
            raise UsageError(f"--{name} must be positive, got {values[name]}")
    for name in ("model_config_file_poll_wait_seconds", "max_num_load_retries", "load_retry_interval_micros",
                 "tensorflow_session_parallelism",
                 "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
        if values[name] < 0:
            raise UsageError(f"--{name} cannot be negative, got {values[name]}")
    path_map = []
    for item in getattr(ns, "path_map", None) or []:
        served, sep, bound = item.partition("=")
        if not sep or not served or not bound:
            raise UsageError(f"--path-map: expected SERVED=BOUND, got {item!r}")
        path_map.append((served, bound))
    model_keys = []
    for item in getattr(ns, "model_keys", None) or []:
        model, sep, key = item.partition("=")
        if not sep or not model or not key:
            raise UsageError(f"--model-key: expected MODEL=KEY, got {item!r}")
        if any(m == model for m, _ in model_keys):
            raise UsageError(f"--model-key: model {model!r} is given twice")
        if not values["model_config_file"] and model != values["model_name"]:
            raise UsageError(f"--model-key {item}: this server serves only {values['model_name']!r}")
        model_keys.append((model, key))
    ssl_config_key = getattr(ns, "ssl_config_key", "default") or ""
    if not ssl_config_key.strip() or ssl_config_key != ssl_config_key.strip():
        raise UsageError(f"--ssl-config-key: expected a key name, got {ssl_config_key!r}")
    drain = float(ns.drain_timeout)
    if not 0 <= drain <= 3600:
        raise UsageError(f"--drain-timeout must be between 0 and 3600 seconds, got {drain:g}")
    workers = parse_workers(getattr(ns, "workers", "1"))
    if workers > 1 and values["grpc_socket_path"]:
        raise UsageError("--grpc_socket_path cannot be shared by several processes: use --workers 1 with it")
    affinity = getattr(ns, "worker_cpu_affinity", "none") or "none"  # one process: nothing to pin
    balance = getattr(ns, "worker_connection_balance", "hash") or "hash"
    event_loop = getattr(ns, "event_loop", "auto") or "auto"
    if event_loop == "uvloop":
        loop_factory(event_loop)  # asked for but not installed: a usage error now, not at start
    key_broker = getattr(ns, "key_broker", "") or ""
    key_broker_ca = getattr(ns, "key_broker_ca", "") or ""
    if key_broker and not key_broker_ca:
        raise UsageError("--key-broker needs --key-broker-ca (the CA of the broker's certificate)")
    if key_broker_ca and not key_broker:
        raise UsageError("--key-broker-ca is given but --key-broker is not")
    timeout = float(getattr(ns, "key_broker_timeout", 300.0))
    if timeout <= 0:
        raise UsageError(f"--key-broker-timeout must be positive, got {timeout:g}")
    return ServerOptions(
        host=ns.host,
        tee=getattr(ns, "tee", "auto"),
        key_broker=key_broker,
        key_broker_ca=key_broker_ca,
        secrets=tuple(getattr(ns, "secrets", None) or ()),
        sim_key=getattr(ns, "sim_key", "") or "",
        key_broker_timeout=timeout,
        wrap_key_file=ns.wrap_key_file or "",
        path_map=tuple(path_map),
        model_keys=tuple(model_keys),
        ssl_config_key=ssl_config_key,
        require_encrypted=bool(getattr(ns, "require_encrypted", False)),
        drain_timeout=drain,
        workers=workers,
        event_loop=event_loop,
        grpc_server=getattr(ns, "grpc_server", "auto") or "auto",
        onnx_execution_mode=getattr(ns, "onnx_execution_mode", "sequential") or "sequential",
        worker_cpu_affinity=affinity,
        worker_connection_balance=balance,
        log_format=ns.log_format,
        log_level=ns.log_level,
        accepted_only=tuple(accepted),
        **values,
    )


#: More processes than this is a typo, not a plan.
MAX_WORKERS = 256


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(text: str | int) -> int:
    """``--workers``: a positive count, or ``auto`` (:func:`usable_cpus`)."""
    value = str(text).strip().lower()
    if value == "auto":
        return usable_cpus()
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--workers: expected a positive number or 'auto', got {text!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}, got {n}")
    return n


def parse_serve_args(argv: list[str]) -> ServerOptions:
    """argv (without the program and command name) → :class:`ServerOptions`. For tests and embedding:
    argparse errors exit with status 2, as on the command line."""
    return options_from_args(build_serve_parser().parse_args(argv))
