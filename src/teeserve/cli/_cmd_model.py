"""``teeserve model``: demo models and model conversion (the model owner's step 1)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .._errors import UsageError

ORDER = 35

_MODEL_HELP = """\
Make the demo models and convert models for the two serving backends. Models are written in
TensorFlow Serving's layout, <base>/<name>/<version>/, so a server's --model_base_path points at
<base>/<name>.
"""

_DEMO_HELP = """\
Train the digits demo model (a small CNN on scikit-learn's bundled 8x8 digits; ~20 s) and write:
  OUT/digits/1/                   SavedModel: serving_default (images [-1,8,8] float 0..16 ->
                                  probabilities [-1,10], classes int64 [-1]), classify and regress
                                  (tf.Example feature 'pixels', 64 floats); warmup requests in
                                  assets.extra/tf_serving_warmup_requests
  OUT/digits-onnx/1/model.onnx    the same model for the ONNX backend (same input/output names)
  SAMPLES/digit_<label>_<n>.png   held-out test digits as 64x64 PNGs (dark ink on white)
With --resnet50, write ResNet-50 v1.5 with random weights instead (the reference's
resnet50-v15-fp32: input [-1,224,224,3] -> predict [-1,1001]; 1.5-3 minutes).
"""

_CONVERT_HELP = """\
Convert a model and check the result: the converted model is run on the same random input as the
source and must agree (frozen graph -> SavedModel: rtol/atol 1e-6; SavedModel -> ONNX: rtol 1e-3,
atol 1e-5). On any error nothing is written.

  frozen graph -> SavedModel (the reference's model_graph_to_saved_model.py):
    teeserve model convert --frozen-graph resnet50-v15-fp32.pb --export-dir models/resnet50-v15-fp32 \\
        --version 1 --inputs input --outputs predict
  SavedModel -> ONNX (tf2onnx):
    teeserve model convert --saved-model models/digits/1 --onnx-out models/digits-onnx/1/model.onnx
  both at once: --frozen-graph ... --export-dir ... --onnx-out ...
"""


def register(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    model = subparsers.add_parser(
        "model", help="make demo models, convert frozen graphs and SavedModels", description=_MODEL_HELP,
        formatter_class=fmt,
    )
    sub = model.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    def usage(_args: argparse.Namespace) -> int:
        model.print_help()
        return 2

    model.set_defaults(func=usage)

    demo = sub.add_parser(
        "make-demo", help="train/write the demo models", description=_DEMO_HELP, formatter_class=fmt
    )
    demo.add_argument(
        "-o", "--out", required=True, type=Path, metavar="DIR", help="models folder (e.g. models/)"
    )
    demo.add_argument("--name", help="model name (default: digits, or resnet50-v15-fp32 with --resnet50)")
    demo.add_argument("--samples-out", type=Path, metavar="DIR", help="sample PNGs (default: OUT/../samples)")
    demo.add_argument("--resnet50", action="store_true", help="write ResNet-50 v1.5 (random weights) instead")
    demo.add_argument("--frozen-graph-out", type=Path, metavar="FILE",
                      help="with --resnet50: also write the frozen GraphDef .pb (the reference's download)")
    demo.add_argument("--no-onnx", action="store_true", help="skip the ONNX model")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--force", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=_make_demo)

    conv = sub.add_parser("convert", help="frozen graph -> SavedModel, SavedModel -> ONNX",
                          description=_CONVERT_HELP, formatter_class=fmt)
    src = conv.add_mutually_exclusive_group(required=True)
    src.add_argument("--frozen-graph", type=Path, metavar="PB", help="frozen GraphDef (.pb) to convert")
    src.add_argument("--saved-model", type=Path, metavar="DIR", help="SavedModel version folder to convert")
    conv.add_argument("--export-dir", type=Path, metavar="DIR", help="model base folder for the SavedModel")
    conv.add_argument("--version", type=int, default=None,
                      help="with --frozen-graph: the SavedModel's version folder (default 1)")
    conv.add_argument("--inputs", metavar="NAMES", help="input tensor names, comma-separated (e.g. input)")
    conv.add_argument(
        "--outputs", metavar="NAMES", help="output tensor names, comma-separated (e.g. predict)"
    )
    conv.add_argument(
        "--onnx-out", type=Path, metavar="FILE", help="write ONNX here (e.g. models/m-onnx/1/model.onnx)"
    )
    conv.add_argument("--opset", type=int, help="ONNX opset (default: tf2onnx's default)")
    conv.add_argument("--signature", default=None,
                      help="with --onnx-out: the signature to convert to ONNX (default serving_default)")
    conv.add_argument("--no-verify", action="store_true", help="skip the output comparison (not recommended)")
    conv.add_argument("--force", action="store_true", help="replace existing outputs")
    conv.set_defaults(func=_convert)


def _say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _make_demo(args: argparse.Namespace) -> int:
    from .. import models

    if args.frozen_graph_out and not args.resnet50:
        raise UsageError("--frozen-graph-out needs --resnet50")
    if args.resnet50:
        if args.samples_out:
            raise UsageError("--samples-out applies to the digits model, not --resnet50")
        print("making ResNet-50 v1.5 (random weights) ...", file=sys.stderr)
        result = models.make_resnet50(
            args.out, name=args.name or "resnet50-v15-fp32", seed=args.seed, onnx=not args.no_onnx,
            frozen_graph_out=args.frozen_graph_out, force=args.force, log=_say,
        )
    else:
        print("making the digits demo model ...", file=sys.stderr)
        result = models.make_digits(
            args.out, name=args.name or "digits", samples_out=args.samples_out, seed=args.seed,
            onnx=not args.no_onnx, force=args.force, progress=sys.stderr.isatty(), log=_say,
        )
    print(f"model {result.name!r} written in {result.seconds:.1f} s:")
    print(f"  SavedModel   {result.saved_model_dir}  (--model_base_path {result.base_path})")
    if result.warmup_file:
        print(f"  warmup       {result.warmup_file}")
    if result.onnx_path:
        print(f"  ONNX         {result.onnx_path}")
    if result.frozen_graph:
        print(f"  frozen graph {result.frozen_graph}")
    if result.samples:
        print(f"  samples      {len(result.samples)} PNGs in {result.samples[0].parent}")
    if result.accuracy is not None:
        onnx_acc = f", ONNX {result.onnx_accuracy:.4f}" if result.onnx_accuracy is not None else ""
        print(f"  test accuracy (held-out): SavedModel {result.accuracy:.4f}{onnx_acc}")
    if result.onnx_max_abs_diff is not None:
        print(f"  ONNX vs SavedModel max abs diff: {result.onnx_max_abs_diff:.3g}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .. import models

    verify = not args.no_verify
    started = time.monotonic()
    # Flags that would change nothing here are refused, not ignored.
    if args.onnx_out is None:
        for flag, value in (("--opset", args.opset), ("--signature", args.signature)):
            if value is not None:
                raise UsageError(f"{flag} applies to the ONNX step: give --onnx-out with it")
    if args.frozen_graph is None and args.version is not None:
        raise UsageError("--version applies to --frozen-graph (a --saved-model folder already is a version)")
    version = 1 if args.version is None else args.version
    signature = args.signature or "serving_default"
    if args.frozen_graph is not None:
        missing = [f for f, v in (("--export-dir", args.export_dir), ("--inputs", args.inputs),
                                  ("--outputs", args.outputs)) if not v]
        if missing:
            raise UsageError(f"--frozen-graph needs {', '.join(missing)}")
        if args.onnx_out is not None:  # before minutes of conversion, not after them
            from ..models._layout import check_absent

            check_absent(Path(args.onnx_out), args.force)
        export_dir = Path(args.export_dir)
        version_dir = export_dir / str(version)
        # What this run makes, removed again if the ONNX step fails ("on any error nothing is
        # written"); a version replaced with --force cannot be given back.
        made = None if version_dir.exists() else (version_dir if export_dir.exists() else export_dir)
        print(f"converting frozen graph {args.frozen_graph} ...", file=sys.stderr)
        saved_model = models.frozen_graph_to_saved_model(
            args.frozen_graph, args.export_dir, version, args.inputs, args.outputs,
            force=args.force, verify=verify, log=_say,
        )
        print(f"SavedModel: {saved_model}")
    else:
        frozen_only = (
            ("--export-dir", args.export_dir), ("--inputs", args.inputs), ("--outputs", args.outputs)
        )
        for flag, value in frozen_only:
            if value:
                raise UsageError(f"{flag} applies to --frozen-graph, not --saved-model")
        if args.onnx_out is None:
            raise UsageError("--saved-model needs --onnx-out")
        saved_model = args.saved_model
        made = None  # the user's SavedModel: never removed
    if args.onnx_out is not None:
        print(f"converting SavedModel {saved_model} to ONNX ...", file=sys.stderr)
        try:
            onnx_path = models.saved_model_to_onnx(
                saved_model, args.onnx_out, opset=args.opset, signature=signature,
                force=args.force, verify=verify, log=_say,
            )
        except BaseException:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
                print(f"removed {made}: the ONNX step failed", file=sys.stderr)
            raise
        print(f"ONNX: {onnx_path}")
    print(f"done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
