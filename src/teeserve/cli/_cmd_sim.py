"""``teeserve sim``: the simulated TEE's key pair, measurement and quotes (laptops and CI)."""

from __future__ import annotations

import argparse

from .._errors import UsageError

ORDER = 40

_DESCRIPTION = """\
The simulated TEE lets the whole flow run without SGX/TDX hardware. Its quotes are SGX-shaped, signed
with a local EC P-256 key, and marked SIMULATED everywhere; a key broker accepts them only when its
policy says allow_simulation = true and trusts the simulation public key.

  init     make the key pair: DIR/sim_attest_key.pem (private, 0600) and DIR/sim_attest_key.pub.pem
           (give the .pub.pem to the policy's [simulation] trusted_keys)
  measure  print the simulated MRENCLAVE of the installed teeserve code plus a configuration file:
           pin it in the policy ([[secrets.NAME.sim]] mr_enclave = "...")
  quote    make a SIMULATED quote (for trying 'teeserve attest show/verify')
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sim",
        help="the simulated TEE: key pair, code measurement, quotes (SIMULATED)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="sim commands", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _help(p))

    i = sub.add_parser(
        "init", help="make the simulation key pair", description="Make the simulation key pair."
    )
    i.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    i.add_argument("--force", action="store_true", help="replace existing key files")
    i.set_defaults(func=_init)

    m = sub.add_parser(
        "measure",
        help="print the simulated MRENCLAVE (hex)",
        description="Print SHA-256 over the installed teeserve package's source files and then the "
        "configuration file's bytes: the value a policy pins for simulated quotes.",
    )
    m.add_argument("--config", metavar="FILE", help="configuration file whose bytes are measured too")
    m.set_defaults(func=_measure)

    q = sub.add_parser("quote", help="make a SIMULATED quote", description="Make a SIMULATED quote.")
    q.add_argument("--key", required=True, metavar="PEM", help="simulation private key (sim_attest_key.pem)")
    q.add_argument("--report-data", default="", metavar="HEX", help="up to 64 bytes, hex (zero-padded)")
    q.add_argument("--mr-enclave", metavar="HEX", help="32 bytes, hex (default: the code measurement)")
    q.add_argument("--config", metavar="FILE", help="configuration measured with the code (no --mr-enclave)")
    q.add_argument("--isv-prod-id", type=int, default=0)
    q.add_argument("--isv-svn", type=int, default=0)
    q.add_argument("--debug", action="store_true", help="set the DEBUG attribute (every policy rejects it)")
    q.add_argument("--hex", action="store_true", help="write hex text instead of binary")
    q.add_argument("-o", "--out", required=True, metavar="FILE", help="output quote file")
    q.set_defaults(func=_quote)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _init(args: argparse.Namespace) -> int:
    from ..attest import sim

    key, pub = sim.init_key(args.out, force=args.force)
    print(f"wrote {key} (private, 0600) and {pub}")
    print(f"simulation key id (the MRSIGNER of its quotes): {sim.key_id(sim.load_public_key(pub)).hex()}")
    return 0


def _config_bytes(path: str | None) -> bytes:
    if path is None:
        return b""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc


def _measure(args: argparse.Namespace) -> int:
    from ..attest import sim

    print(sim.code_measurement(_config_bytes(args.config)).hex())
    return 0


def _hex_arg(value: str, name: str, max_len: int, exact: bool = False) -> bytes:
    try:
        data = bytes.fromhex(value)
    except ValueError as exc:
        raise UsageError(f"{name}: not hex") from exc
    if len(data) > max_len or (exact and len(data) != max_len):
        raise UsageError(f"{name}: must be {'exactly' if exact else 'at most'} {max_len} bytes")
    return data


def _quote(args: argparse.Namespace) -> int:
    from .._io import write_file_atomic
    from ..attest import sim

    report_data = _hex_arg(args.report_data, "--report-data", 64)
    if args.mr_enclave is not None:
        if args.config is not None:
            raise UsageError("give --mr-enclave or --config, not both")
        mr_enclave = _hex_arg(args.mr_enclave, "--mr-enclave", 32, exact=True)
    else:
        mr_enclave = sim.code_measurement(_config_bytes(args.config))
    if not (0 <= args.isv_prod_id <= 0xFFFF and 0 <= args.isv_svn <= 0xFFFF):
        raise UsageError("--isv-prod-id and --isv-svn are 16-bit values (0..65535)")
    key = sim.load_signing_key(args.key)
    quote = sim.make_quote(
        key, report_data, mr_enclave=mr_enclave, isv_prod_id=args.isv_prod_id, isv_svn=args.isv_svn,
        debug=args.debug,
    )  # fmt: skip
    write_file_atomic(args.out, quote.hex().encode() + b"\n" if args.hex else quote)
    print(f"wrote a SIMULATED quote to {args.out} (mr_enclave {mr_enclave.hex()})")
    return 0
