"""``teeserve keys``: make and convert wrap keys (the 16-byte key that protects encrypted files)."""

from __future__ import annotations

import argparse

from ._output import echo

ORDER = 10

_DESCRIPTION = """\
A wrap key is the 16-byte AES-128 key from which Gramine derives the key of every protected
(encrypted) file. Two file forms exist and both are accepted everywhere a key is read:
  raw   exactly 16 bytes: what gramine-sgx-pf-crypt's -w option reads
  hex   32 hex characters and a newline: the form of a manifest's fs.insecure__keys.<name>
Key files are written with mode 0600 and are never overwritten without --force.
"""


def _new(args: argparse.Namespace) -> int:
    from teeserve import pf

    pf.write_wrap_key(args.output, pf.new_wrap_key(), force=args.force, hex=args.hex)
    echo(f"wrote a new {'hex' if args.hex else 'raw 16-byte'} wrap key to {args.output} (mode 0600)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from teeserve import pf

    key = pf.load_wrap_key(args.input)
    pf.write_wrap_key(args.output, key, force=args.force, hex=args.to == "hex")
    echo(f"wrote the wrap key of {args.input} to {args.output} in {args.to} form (mode 0600)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = subparsers.add_parser(
        "keys",
        help="make and convert wrap keys",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = keys.add_subparsers(title="commands", metavar="COMMAND")
    keys.set_defaults(func=lambda args: (keys.print_help(), 2)[1])

    new = sub.add_parser(
        "new",
        help="write a fresh random wrap key",
        description="Write 16 fresh random bytes (from the OS CSPRNG) as a wrap key, mode 0600.",
    )
    new.add_argument("-o", "--output", required=True, metavar="PATH", help="key file to create")
    new.add_argument("--hex", action="store_true", help="write the 32-hex-character manifest form")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.set_defaults(func=_new)

    conv = sub.add_parser(
        "convert",
        help="rewrite a wrap key in raw or hex form",
        description="Read a wrap key in either form and write it in the other (or the same) form, 0600.",
    )
    conv.add_argument("-i", "--input", required=True, metavar="PATH", help="existing key file")
    conv.add_argument("-o", "--output", required=True, metavar="PATH", help="key file to create")
    conv.add_argument("--to", choices=("raw", "hex"), required=True, help="form of the output")
    conv.add_argument("--force", action="store_true", help="overwrite an existing file")
    conv.set_defaults(func=_convert)
