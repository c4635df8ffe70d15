"""``teeserve demo``: the whole flow on this machine (also what ``make demo`` runs)."""

from __future__ import annotations

import argparse

ORDER = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole confidential-serving flow on this machine (simulated TEE)",
        description="Run every role on this machine: the model owner makes, encrypts and protects a model; "
                    "everything generated is left in --out, whose layout is printed at the end.")
    p.add_argument("--out", default="demo-out", help="folder for everything generated (default: %(default)s); "
                   "it is emptied first")
    p.add_argument("--model", choices=("digits", "resnet50"), default="digits",
                   help="the small digits classifier (default) or the reference deployment's ResNet-50")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .._demo import run_demo

    run_demo(args.out, model=args.model)
    return 0
