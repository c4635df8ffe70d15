"""``teeserve client predict`` and ``teeserve client bench``: the remote requester's tools."""

from __future__ import annotations

import argparse
import json
import sys

ORDER = 70


def _tls_args(p: argparse.ArgumentParser, single_dash: bool = False) -> None:
    pre = ("-{0}", "--{0}") if single_dash else ("--{0}",)
    p.add_argument(*(x.format("ca") for x in pre), dest="ca", metavar="FILE",
                   help="CA certificate that signed the server's certificate (enables TLS)")
    p.add_argument(*(x.format("crt") for x in pre), dest="crt", metavar="FILE",
                   help="client certificate, for mutual TLS")
    p.add_argument(*(x.format("key") for x in pre), dest="key", metavar="FILE", help="client private key")
    p.add_argument("--server-name", metavar="NAME",
                   help="name to check in the server certificate when it differs from the address")


def register(subparsers: argparse._SubParsersAction) -> None:
    client = subparsers.add_parser(
        "client", help="send inference requests (predict) or measure a server (bench)",
        description="The remote requester: one request with `predict`, load and latency with `bench`.")
    sub = client.add_subparsers(title="client commands", metavar="COMMAND")
    client.set_defaults(func=lambda args: (client.print_help(), 2)[1])

    p = sub.add_parser(
        "predict", help="send one Predict request by gRPC or REST",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one Predict request and print the top-k classes (or the raw outputs).\n\n"
                    "examples:\n"
                    "  teeserve client predict --url 127.0.0.1:8500 --model digits --image samples/digit_3_0.png \\\n"
                    "      --ca ssl_configure/ca_cert.pem --crt ssl_configure/client/cert.pem \\\n"
                    "      --key ssl_configure/client/key.pem --server-name grpc.tf-serving.service.com\n"
                    "  teeserve client predict --rest --url 127.0.0.1:8501 --model digits --npy x.npy --raw")
    p.add_argument("--url", default="localhost:8500", help="server address HOST:PORT (default: %(default)s)")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--model", required=True, help="model name")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--version", type=int, help="model version (default: the latest available)")
    g.add_argument("--label", help="model version label, e.g. stable")
    p.add_argument("--signature", default="", help="signature name (default: serving_default)")
    p.add_argument("--image", help="an image file, decoded and resized for the model's input")
    p.add_argument("--npy", help="a .npy file holding the input array (batch dimension included)")
    p.add_argument("--json", dest="json_input", metavar="JSON_OR_FILE",
                   help="inputs as JSON: a list for a single input, or {\"name\": list, ...}")
    p.add_argument("--input-name", help="input alias when the model has several inputs")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per example (default: %(default)s)")
    p.add_argument("--raw", action="store_true", help="print every output tensor as JSON instead of top-k")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default: %(default)s)")
    _tls_args(p)
    p.set_defaults(func=_predict)

    b = sub.add_parser(
        "bench", help="measure latency and throughput (flags of the reference resnet_client_grpc.py)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Closed-loop benchmark: CNUM concurrent connections, each sending LOOP requests.\n"
                    "Accepts the reference client's flags unchanged and prints its summary line:\n"
                    "  summary: cnum N, batch B, e2e time(s) T, average latency(ms) L, tps: X\n"
                    "plus latency percentiles and error counts by status.")
    b.add_argument("-url", "--url", dest="url", default="localhost:8500", help="server HOST:PORT (default: %(default)s)")
    b.add_argument("-batch", "--batch", dest="batch", type=int, default=1, help="batch size (default: %(default)s)")
    b.add_argument("-cnum", "--cnum", dest="cnum", type=int, default=16,
                   help="concurrent connections, one task each (default: %(default)s)")
    b.add_argument("-loop", "--loop", dest="loop", type=int, default=200,
                   help="requests per connection, 0 = until interrupted (default: %(default)s)")
    b.add_argument("-img", "--img", dest="img", help="image to send (needs -batch 1); default: random pixels")
    _tls_args(b, single_dash=True)
    b.add_argument("--model", default="resnet50-v15-fp32", help="model name (default: %(default)s)")
    b.add_argument("--signature", default="serving_default", help="signature (default: %(default)s)")
    b.add_argument("--input-name", default="input", help="input alias (default: %(default)s)")
    b.add_argument("--shape", default="224,224,3",
                   help="input shape without the batch dimension (default: %(default)s)")
    b.add_argument("--duration", type=float, help="stop after this many seconds (with -loop 0: run for exactly this)")
    b.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    b.add_argument("--warmup", type=int, default=5, help="warm-up requests per connection (default: %(default)s)")
    b.add_argument("--procs", type=int, default=1, help="client processes to spread the connections over")
    b.add_argument("--retries", type=int, default=0, help="retries per request on UNAVAILABLE")
    b.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    b.add_argument("--quiet", action="store_true", help="no per-request lines")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object at the end")
    b.add_argument("--plot", metavar="OUT.png", help="save latency over time and a histogram as a PNG")
    b.set_defaults(func=_bench)


def _tls(args: argparse.Namespace):
    from ..client import TlsOptions

    return TlsOptions(ca=args.ca, crt=args.crt, key=args.key, server_name=args.server_name)


def _bytes_json(value: object) -> object:
    """String tensor elements (bytes) in JSON: text when UTF-8, else ``{"b64": ...}`` as TF Serving's
    REST API writes binary strings."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return {"b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ..client import Target, get_signature, load_inputs, predict, top_k

    if args.top_k < 1:
        from .._errors import UsageError

        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    target = Target(args.url, args.model, args.version, args.label, args.signature, args.rest, args.timeout)
    tls = _tls(args)
    sig = get_signature(target, tls)
    inputs = load_inputs(image=args.image, npy=args.npy, json_input=args.json_input, input_name=args.input_name,
                         signature_inputs={k: shape for k, (_, shape) in sig.items()})
    outcome = predict(target, tls, inputs, {k: dt for k, (dt, _) in sig.items()})
    version = f" version {outcome.version}" if outcome.version is not None else ""
    if args.raw:
        print(json.dumps({"model": outcome.model, "version": outcome.version,
                          "outputs": {k: v.tolist() for k, v in outcome.outputs.items()}}, default=_bytes_json))
        return 0
    probs = next((v for k, v in outcome.outputs.items() if "prob" in k.lower()), None)
    if probs is None:
        floats = [v for v in outcome.outputs.values() if v.dtype.kind == "f" and v.ndim == 2]
        probs = floats[0] if floats else None
    if probs is None:
        print(json.dumps({k: v.tolist() for k, v in outcome.outputs.items()}, default=_bytes_json))
        return 0
    print(f"model {outcome.model}{version}:")
    for n, row in enumerate(top_k(np.asarray(probs), args.top_k)):
        ranked = ", ".join(f"class {c} ({s:.3f})" for c, s in row)
        print(f"  example {n}: {ranked}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..client import BenchConfig, format_summary, plot, run_bench

    try:
        shape = tuple(int(x) for x in args.shape.split(",") if x)
    except ValueError:
        from .._errors import UsageError

        raise UsageError(f"--shape: expected comma-separated integers, got {args.shape!r}") from None
    for flag, value, least in (("-cnum", args.cnum, 1), ("-batch", args.batch, 1), ("-loop", args.loop, 0),
                               ("--procs", args.procs, 1), ("--warmup", args.warmup, 0),
                               ("--retries", args.retries, 0)):
        if value < least:
            from .._errors import UsageError

            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (before the run, not after it)
        except ImportError:
            from .._errors import UsageError

            raise UsageError("--plot needs matplotlib: pip install 'teeserve[plot]'") from None
    cfg = BenchConfig(url=args.url, tls=_tls(args), model=args.model, signature=args.signature,
                      input_name=args.input_name, shape=shape, batch=args.batch, cnum=args.cnum,
                      loop=args.loop, duration=args.duration, warmup=args.warmup, img=args.img, rest=args.rest,
                      procs=args.procs, retries=args.retries, timeout=args.timeout,
                      verbose=False if args.quiet else None)
    result = run_bench(cfg)
    if result.first_response is not None and not args.json:
        first = json.dumps(result.first_response)
        print(first if len(first) < 2000 else first[:2000] + " ...")
    print(format_summary(result))
    p = result.percentiles()
    if p:
        print(f"latency(ms): p50 {p['p50']:.1f}, p90 {p['p90']:.1f}, p99 {p['p99']:.1f}, max {p['max']:.1f}")
    print(f"requests: {result.requests} ok, errors: {result.errors or 'none'}")
    if result.first_error:
        print(f"first error: {result.first_error}")
    if args.json:
        print(json.dumps(result.to_json()))
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    sys.stdout.flush()
    return 0 if result.requests and not result.errors else 1
