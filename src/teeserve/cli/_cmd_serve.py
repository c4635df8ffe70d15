"""``teeserve serve``: the TensorFlow-Serving-compatible inference server (the TEE host's command)."""

from __future__ import annotations

import argparse

ORDER = 60

_DESCRIPTION = """\
Serve models with TensorFlow Serving's gRPC and REST APIs: tensorflow_model_server's flags work
unchanged (same names, defaults and meanings), so an existing start command works with only the
program name changed:

  teeserve serve --model_name=resnet50-v15-fp32 --model_base_path=/models/resnet50-v15-fp32 \\
      --port=8500 --rest_api_port=8501 --ssl_config_file=ssl.cfg --wrap-key wrap_key

Models are SavedModels (saved_model.pb) or ONNX (model.onnx) in numbered version directories; files
may be Gramine protected files, decrypted in memory with --wrap-key and never written out in
plaintext. --ssl_config_file (TensorFlow Serving's SSLConfig, plain or encrypted) secures gRPC *and*
REST; client_verify: true makes both mutual TLS. Without it the server warns loudly: plaintext.

Health: grpc.health.v1 ("" and the two TF services are SERVING only when every model has a version
available, and NOT_SERVING while draining; the service "liveness" is SERVING while the process runs);
REST GET /v1/health/ready and /v1/health/live. SIGTERM or SIGINT: stop accepting, finish in-flight
requests (up to --drain-timeout seconds), exit 0.
"""

_EXAMPLES = """\
examples:
  teeserve serve --model_name=digits --model_base_path=models/digits --rest_api_port=8501 --host 127.0.0.1
  teeserve serve --model_config_file=models.config --model_config_file_poll_wait_seconds=30 \\
      --ssl_config_file=ssl.cfg --wrap-key wrap_key --log-format json
  teeserve serve --model_name=digits --model_base_path=models/digits --ssl_config_file=ssl.cfg \\
      --tee sim --sim-key sim/sim_attest_key.pem --key-broker broker.example:4433 --key-broker-ca ca.pem
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..serving._flags import add_serve_arguments

    p = subparsers.add_parser(
        "serve",
        help="serve models with TensorFlow Serving's gRPC and REST APIs (TLS, encrypted models)",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        usage="%(prog)s [--tf_flag=VALUE ...] [teeserve options]",
    )
    add_serve_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serving._flags import options_from_args
    from ..serving._server import run as run_server

    return run_server(options_from_args(args), print_measurement=bool(getattr(args, "print_measurement", False)))
