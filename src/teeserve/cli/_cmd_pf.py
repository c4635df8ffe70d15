"""``teeserve encrypt`` / ``teeserve decrypt``: Gramine protected files, compatible with pf-crypt."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ._output import echo

ORDER = 20

_ENCRYPT_DESCRIPTION = """\
Encrypt a file, or a whole directory tree (e.g. a SavedModel with its variables/), into Gramine's
protected-files format; the result decrypts with gramine-sgx-pf-crypt and opens inside Gramine.

Each file is bound to the path Gramine will check when it opens it: the normalized host path of
the file under its encrypted mount's uri. By default that is the output path as typed (-o OUT for a
file, OUT/relpath for a tree), so run this from the directory the enclave will run in, with -o the
path the manifest's encrypted mount uses. If the files will be mounted from elsewhere, give that
location with --host-prefix (file: PREFIX/basename(OUT); tree: PREFIX/relpath). PREFIX must not be
empty (that would bind to /NAME, the root directory); a relative PREFIX stays relative, for a mount
whose uri is relative (file:enc/), so give an absolute one for files mounted by absolute path.

Format version 1 (the default) is readable by every Gramine release; version 2 only by v1.9+.

example: a manifest mount { type = "encrypted", path = "/models/", uri = "file:enc/" } opens
/models/demo/1/saved_model.pb from the host file enc/demo/1/saved_model.pb, so
  teeserve encrypt -w wrap_key -i demo -o enc/demo
binds every file to enc/demo/<relpath>, the path Gramine checks.
"""

_DECRYPT_DESCRIPTION = """\
Decrypt a protected file (or a tree of them) after verifying every node; the output is written
with mode 0600 and appears only if everything authenticated. --verify-path checks that the path
bound into each file equals the normalized input path (like pf-crypt decrypt -V);
--expected-path checks it against the given path (normalized) instead.
"""


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], object] | None]:
    """A tqdm bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty() or total <= 0:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar:
        yield bar.update


def _tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _check_host_prefix(prefix: str | None) -> None:
    """An empty prefix (often an unset shell variable) would bind every file to /NAME, under the
    root directory, where no mount puts it; a relative one is kept, as Gramine binds relative uris."""
    from teeserve._errors import UsageError

    if prefix is not None and not prefix:
        raise UsageError(
            "--host-prefix: empty; it must name the host directory the files will be mounted from "
            "(an empty prefix would bind them to /NAME, the root directory); leave it out to bind "
            "to the output path"
        )


def _check_not_empty(args: argparse.Namespace) -> None:
    """An empty -w/-i/-o (an unset shell variable) names no file: as a tree's output it would bind
    every file to /relpath and write into the current directory."""
    from teeserve._errors import UsageError

    for flag, value, what in (("-w/--wrap-key", args.wrap_key, "the wrap key file"),
                              ("-i/--input", args.input, "the input file or directory"),
                              ("-o/--output", args.output, "the output file or directory")):
        if not value:
            raise UsageError(f"{flag}: empty; give {what}")


def _encrypt(args: argparse.Namespace) -> int:
    from teeserve import pf

    _check_not_empty(args)
    _check_host_prefix(args.host_prefix)
    key = pf.load_wrap_key(args.wrap_key)
    if os.path.isdir(args.input):
        with _progress(_tree_bytes(args.input), "encrypt") as progress:
            written = pf.encrypt_tree(
                args.input, args.output, key, host_prefix=args.host_prefix,
                format_version=args.format_version, overwrite=args.force, progress=progress,
            )
        for out, bound in written:
            echo(f"{out}\tbound to {bound}")
        echo(f"encrypted {len(written)} files into {args.output} (format version {args.format_version})")
        return 0
    bound_path = None
    if args.host_prefix is not None:
        bound_path = f"{args.host_prefix}/{os.path.basename(os.path.normpath(args.output))}"
    size = os.path.getsize(args.input) if os.path.isfile(args.input) else 0
    with _progress(size, "encrypt") as progress:
        bound = pf.encrypt_file(
            args.input, args.output, key, bound_path=bound_path,
            format_version=args.format_version, overwrite=args.force, progress=progress,
        )
    echo(f"{args.output}\tbound to {bound}")
    return 0


def _decrypt(args: argparse.Namespace) -> int:
    from teeserve import pf
    from teeserve._errors import UsageError

    _check_not_empty(args)
    if args.verify_path and args.expected_path is not None:
        raise UsageError("give either --verify-path or --expected-path, not both")
    key = pf.load_wrap_key(args.wrap_key)
    if os.path.isdir(args.input):
        if args.expected_path is not None:
            raise UsageError("--expected-path names one file; for a tree use --verify-path")
        with _progress(_tree_bytes(args.input), "decrypt") as progress:
            written = pf.decrypt_tree(
                args.input, args.output, key, verify_paths=args.verify_path,
                overwrite=args.force, progress=progress,
            )
        for out, stored in written:
            echo(f"{out}\tstored path {stored}")
        echo(f"decrypted {len(written)} files into {args.output}")
        return 0
    expected = None
    if args.verify_path:
        expected = pf.normalize_path(args.input)
    elif args.expected_path is not None:
        expected = pf.normalize_path(args.expected_path)
        if not expected:  # "", "." or "a/..": no file is bound to an empty path (an unset variable?)
            raise UsageError(f"--expected-path: {args.expected_path!r} names no file; give the path the "
                             "file was encrypted for (as 'teeserve encrypt' printed it)")
    size = os.path.getsize(args.input) if os.path.isfile(args.input) else 0
    with _progress(size, "decrypt") as progress:
        pf.decrypt_file(
            args.input, args.output, key, expected_path=expected, overwrite=args.force,
            progress=progress,
        )
    verified = f" (path {expected} verified)" if expected else ""
    echo(f"{args.output}\tdecrypted from {args.input}{verified}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    enc = subparsers.add_parser(
        "encrypt",
        help="encrypt files or trees into Gramine protected files",
        description=_ENCRYPT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enc.add_argument("-w", "--wrap-key", required=True, metavar="KEY", help="wrap key file (raw or hex)")
    enc.add_argument("-i", "--input", required=True, metavar="IN", help="plaintext file or directory")
    enc.add_argument("-o", "--output", required=True, metavar="OUT", help="protected file or directory")
    enc.add_argument(
        "--format-version", type=int, choices=(1, 2), default=1,
        help="1: every Gramine release (default); 2: Gramine v1.9+ only",
    )
    enc.add_argument(
        "--host-prefix", metavar="PREFIX",
        help="host directory the files will be mounted from, if not the output location "
        "(not empty; relative stays relative)",
    )
    enc.add_argument("--force", action="store_true", help="overwrite existing output files")
    enc.set_defaults(func=_encrypt)

    dec = subparsers.add_parser(
        "decrypt",
        help="verify and decrypt Gramine protected files",
        description=_DECRYPT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dec.add_argument("-w", "--wrap-key", required=True, metavar="KEY", help="wrap key file (raw or hex)")
    dec.add_argument("-i", "--input", required=True, metavar="IN", help="protected file or directory")
    dec.add_argument("-o", "--output", required=True, metavar="OUT", help="plaintext file or directory")
    dec.add_argument("--verify-path", action="store_true", help="bound path must equal the input path")
    dec.add_argument("--expected-path", metavar="P", help="bound path must equal P (normalized)")
    dec.add_argument("--force", action="store_true", help="overwrite existing output files")
    dec.set_defaults(func=_decrypt)
