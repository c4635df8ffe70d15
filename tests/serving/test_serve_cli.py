"""``teeserve serve``'s command line: tensorflow_model_server's flags, teeserve's options, bad input."""

from __future__ import annotations

import shlex
from pathlib import Path
import subprocess
import sys

import pytest

from teeserve._errors import UsageError
from teeserve.cli import build_parser
from teeserve.serving._flags import DEFAULT_HOST, ServerOptions, options_from_args, parse_bool

# The start command of the reference deployment (reference-deployment.md, step 2.4), program name changed.
REFERENCE = (
    "--model_name=resnet50-v15-fp32 --model_base_path=/models/resnet50-v15-fp32 --port=8500 "
    "--rest_api_port=8501 --enable_model_warmup=true --flush_filesystem_caches=false --enable_batching=false "
    "--ssl_config_file=ssl.cfg --rest_api_num_threads=64 --tensorflow_session_parallelism=0 "
    "--tensorflow_intra_op_parallelism=2 --tensorflow_inter_op_parallelism=2 --file_system_poll_wait_seconds=5"
)


def parse(argv: list[str] | str) -> ServerOptions:
    if isinstance(argv, str):
        argv = shlex.split(argv)
    args = build_parser().parse_args(["serve", *argv])
    assert args.func.__module__ == "teeserve.cli._cmd_serve"
    return options_from_args(args)


def test_reference_deployment_command_line() -> None:
    o = parse(REFERENCE)
    assert o.model_name == "resnet50-v15-fp32"
    assert o.model_base_path == "/models/resnet50-v15-fp32"
    assert (o.port, o.rest_api_port) == (8500, 8501)
    assert o.enable_model_warmup is True and o.enable_batching is False
    assert o.ssl_config_file == "ssl.cfg"
    assert o.rest_api_num_threads == 64
    assert (o.tensorflow_session_parallelism, o.tensorflow_intra_op_parallelism,
            o.tensorflow_inter_op_parallelism) == (0, 2, 2)
    assert o.file_system_poll_wait_seconds == 5
    assert o.accepted_only == ("flush_filesystem_caches",)
    assert o.host == DEFAULT_HOST == "0.0.0.0"  # reachable in a container, as TF Serving


def test_onnx_execution_mode_option_reaches_the_core(tmp_path: Path) -> None:
    from teeserve.serving._server import ModelServer

    base = ["--model_name=m", f"--model_base_path={tmp_path}", "--tensorflow_inter_op_parallelism=2"]
    assert parse(base).onnx_execution_mode == "sequential"
    assert ModelServer(parse(base)).make_core().options.onnx_parallel_execution is False
    o = parse([*base, "--onnx-execution-mode=parallel"])
    assert o.onnx_execution_mode == "parallel"
    assert ModelServer(o).make_core().options.onnx_parallel_execution is True
    assert o.measured_config() == parse(base).measured_config()  # capacity, not what is served


def test_onnx_execution_mode_rejects_other_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["--model_name=m", "--model_base_path=/m", "--onnx-execution-mode=fast"])
    assert exc.value.code == 2
    assert "--onnx-execution-mode" in capsys.readouterr().err


def test_space_separated_form_is_the_same() -> None:
    spaced = [part for flag in shlex.split(REFERENCE) for part in flag.split("=", 1)]
    assert parse(spaced) == parse(REFERENCE)


def test_tensorflow_serving_defaults() -> None:
    o = parse("--model_base_path=/m")
    assert (o.port, o.rest_api_port, o.model_name) == (8500, 0, "default")
    assert o.rest_api_timeout_in_ms == 30000 and o.file_system_poll_wait_seconds == 1
    assert o.enable_model_warmup is True and o.enable_batching is False
    assert o.model_config_file_poll_wait_seconds == 0 and o.max_num_load_retries == 5
    assert o.ssl_config_file == "" and o.plaintext


@pytest.mark.parametrize(
    ("argv", "expected"),
    [("--enable_batching", True), ("--enable_batching=true", True), ("--enable_batching=false", False),
     ("--enable_batching false", False), ("--enable_batching=1", True), ("--enable_batching=FALSE", False),
     ("--enable_batching yes", True)],
)
def test_boolean_forms(argv: str, expected: bool) -> None:
    assert parse(f"--model_base_path=/m {argv}").enable_batching is expected


def test_flags_reach_options() -> None:
    o = parse("--model_config_file=m.cfg --model_config_file_poll_wait_seconds 30 --grpc_max_threads=3 "
              "--rest_api_timeout_in_ms 500 --grpc_channel_arguments=grpc.max_connection_age_ms=2000,x.y=abc "
              "--monitoring_config_file=mon.cfg --batching_parameters_file=b.cfg --enable_batching "
              "--grpc_socket_path=/tmp/s.sock --wrap-key wk --host 127.0.0.1 --log-format json --drain-timeout 3.5")
    assert o.model_config_file == "m.cfg" and o.model_config_file_poll_wait_seconds == 30
    assert o.grpc_max_threads == 3 and o.rest_api_timeout_in_ms == 500
    assert o.grpc_channel_arguments == (("grpc.max_connection_age_ms", 2000), ("x.y", "abc"))
    assert o.monitoring_config_file == "mon.cfg" and o.batching_parameters_file == "b.cfg"
    assert o.grpc_socket_path == "/tmp/s.sock"
    assert (o.wrap_key_file, o.host, o.log_format, o.drain_timeout) == ("wk", "127.0.0.1", "json", 3.5)


def test_protected_file_options() -> None:
    o = parse("--model_base_path=/models/m --path-map /models=models --path-map /cfg=ssl_configure "
              "--require-encrypted")
    assert o.path_map == (("/models", "models"), ("/cfg", "ssl_configure"))
    assert o.require_encrypted is True
    assert parse("--model_base_path=/m").require_encrypted is False
    with pytest.raises(UsageError, match="--path-map: expected SERVED=BOUND"):
        parse("--model_base_path=/m --path-map /models")


def test_unsupported_flag_at_its_default_is_accepted() -> None:
    o = parse("--model_base_path=/m --use_alts_credentials=false --per_process_gpu_memory_fraction=0")
    assert o.model_base_path == "/m"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--model_base_path=/m --use_alts_credentials=true", "--use_alts_credentials=true: teeserve does not support"),
        ("--model_base_path=/m --prefer_tflite_model", "--prefer_tflite_model=true: teeserve does not support"),
        ("--model_base_path=/m --port=8501 --rest_api_port=8501", "--port and --rest_api_port cannot be the same"),
        ("--port=8500", "no model to serve"),
        ("--model_base_path=/m --port=0", "nothing to serve on"),
        ("--model_base_path=/m --grpc_max_threads=0", "--grpc_max_threads must be positive"),
        ("--model_base_path=/m --grpc_channel_arguments=novalue", "expected key=value"),
        ("--model_base_path=/m --drain-timeout=-1", "--drain-timeout must be between"),
        ("--model_base_path=/m --file_system_poll_wait_seconds=-1 --max_num_load_retries=-2",
         "--max_num_load_retries cannot be negative"),
    ],
)
def test_contradictions_are_usage_errors(argv: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(argv)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "teeserve", "serve", *argv], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_base_path=/m", "--no_such_flag=1"], "unrecognized arguments: --no_such_flag=1"),
        (["--model_base_path=/m", "--model-base-path=/m"], "unrecognized arguments: --model-base-path=/m"),
        (["--model_base=/m"], "unrecognized arguments: --model_base=/m"),  # no abbreviations
        (["--model_base_path=/m", "--port=eighty"], "argument --port: expected an integer, got 'eighty'"),
        (["--model_base_path=/m", "--port=70000"], "expected a port number 0..65535"),
        (["--model_base_path=/m", "--enable_batching=maybe"], "expected true or false, got 'maybe'"),
        (["--model_base_path=/m", "--port=8501", "--rest_api_port=8501"], "cannot be the same"),
    ],
)
def test_cli_bad_flags_exit_2_with_a_clear_message(argv: list[str], message: str) -> None:
    out = _cli(*argv)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_help_documents_the_flags() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for flag in ("--model_config_file_poll_wait_seconds", "--ssl_config_file", "--wrap-key", "--drain-timeout",
                 "--log-format", "--host", "mutual TLS", "liveness"):
        assert flag in out.stdout


def test_grpc_server_option() -> None:
    base = parse("--model_base_path=/m")
    assert (base.grpc_server, base.grpc_server_kind) == ("auto", "aio")  # one process: grpc.aio
    assert parse("--model_base_path=/m --workers 2").grpc_server_kind == "threads"  # each worker: threads
    assert parse("--model_base_path=/m --workers 2 --grpc-server aio").grpc_server_kind == "aio"
    threads = parse("--model_base_path=/m --grpc-server=threads")
    assert threads.grpc_server_kind == "threads"
    assert threads.measured_config() == base.measured_config()  # capacity, not what is served
    with pytest.raises(SystemExit):
        parse("--model_base_path=/m --grpc-server=twisted")


def test_event_loop_option_does_not_change_the_measurement() -> None:
    base = parse("--model_base_path=/m")
    assert base.event_loop == "auto"
    stdlib = parse("--model_base_path=/m --event-loop asyncio")
    assert stdlib.event_loop == "asyncio"
    assert stdlib.measured_config() == base.measured_config()  # capacity, not what is served
    with pytest.raises(SystemExit):
        parse("--model_base_path=/m --event-loop=libev")


def test_parse_bool_rejects_garbage() -> None:
    import argparse

    assert parse_bool(" True ") is True and parse_bool("0") is False
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bool("")
