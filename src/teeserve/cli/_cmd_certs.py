"""``teeserve certs``: the model owner's CA, server and client certificates and ``ssl.cfg``."""

from __future__ import annotations

import argparse

from .._errors import UsageError

ORDER = 30

_DESCRIPTION = """\
Make the TLS material for serving: a CA, a server certificate and (two-way TLS, the default) a client
certificate, all signed by the CA, plus ssl.cfg in TensorFlow Serving's SSLConfig text format with the
PEM text inline (client_verify: true for two-way). Made with the 'cryptography' library.

Every certificate has a subjectAltName: the CN (as a DNS name, or as an IP address when the CN is an
IP literal) plus the --*-dns and --*-ip values. No name is added implicitly; for a demo on this
machine pass --loopback (adds localhost, 127.0.0.1 and ::1 to the server certificate).

Files (the reference deployment's layout):
  OUT/ca_cert.pem      0644  give to requesters (they verify the server with it)
  OUT/ca_key.pem       0600  the CA's key: keep it with the model owner, off the TEE host
  OUT/server/cert.pem  0644
  OUT/server/key.pem   0600
  OUT/client/cert.pem  0644  two-way only: the requester's certificate ...
  OUT/client/key.pem   0600  ... and key
  OUT/ssl.cfg          0600  holds the server key: deploy it only as a Gramine encrypted file
                             ('teeserve encrypt'), never as a plaintext or allowed file

Private keys are unencrypted PKCS#8 PEM. All files are written or none: nothing in OUT is replaced
unless --force is given, and then the whole set is replaced together.
"""

_EXAMPLES = """\
examples:
  teeserve certs --server-cn grpc.tf-serving.service.com --client-cn client.tf-serving.service.com \\
      -o ssl_configure/
  teeserve certs --server-cn localhost --client-cn requester --loopback --key-type rsa-4096 -o tls/
  teeserve certs --server-cn 10.0.0.5 --oneway -o ssl_configure/
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..tlsmaterial._x509 import DEFAULT_CA_DAYS, DEFAULT_DAYS, DEFAULT_KEY_TYPE, KEY_TYPES, MAX_DAYS

    p = subparsers.add_parser(
        "certs",
        help="make a CA, server and client certificates and TensorFlow Serving's ssl.cfg",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory (e.g. ssl_configure/)")
    p.add_argument(
        "--server-cn",
        required=True,
        metavar="NAME",
        help="server common name: the host name (or IP) clients dial",
    )
    p.add_argument(
        "--client-cn", metavar="NAME", help="client common name (required unless --oneway)"
    )
    p.add_argument(
        "--oneway", action="store_true", help="server-only TLS: no client certificate, client_verify false"
    )
    p.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default=DEFAULT_KEY_TYPE,
        help=f"key type of all three keys (default: {DEFAULT_KEY_TYPE}, fast; rsa-4096 matches the "
        "reference deployment but takes seconds)",
    )
    p.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="N",
        help=f"validity of the server and client certificates in days (default: {DEFAULT_DAYS}; "
        f"max {MAX_DAYS})",
    )
    p.add_argument(
        "--ca-days",
        type=int,
        default=None,
        metavar="N",
        help=f"validity of the CA certificate in days (default: {DEFAULT_CA_DAYS}, or --days if longer)",
    )
    p.add_argument("--ca-cn", metavar="NAME", help="CA common name (default: '<server CN> CA')")
    p.add_argument(
        "--server-dns", action="append", default=[], metavar="NAME",
        help="extra DNS name for the server certificate (repeatable; '*.example.com' allowed)",
    )
    p.add_argument(
        "--server-ip", action="append", default=[], metavar="IP",
        help="IP address for the server certificate (repeatable; IPv4 or IPv6)",
    )
    p.add_argument(
        "--client-dns", action="append", default=[], metavar="NAME",
        help="extra DNS name for the client certificate (repeatable)",
    )
    p.add_argument(
        "--loopback", action="store_true",
        help="also put localhost, 127.0.0.1 and ::1 in the server certificate (local demos only)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing set of TLS material in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import tlsmaterial

    if args.oneway:
        if args.client_cn is not None or args.client_dns:
            raise UsageError("--oneway makes no client certificate: drop --client-cn/--client-dns")
        client_cn = None
    else:
        if args.client_cn is None:
            raise UsageError("--client-cn is required for two-way TLS (or pass --oneway for server-only TLS)")
        client_cn = args.client_cn
    server_dns = list(args.server_dns)
    server_ips = list(args.server_ip)
    if args.loopback:
        server_dns.append("localhost")
        server_ips += ["127.0.0.1", "::1"]
    made = tlsmaterial.make_tls_material(
        args.out,
        server_cn=args.server_cn,
        client_cn=client_cn,
        key_type=args.key_type,
        days=args.days,
        ca_days=args.ca_days,
        ca_cn=args.ca_cn,
        server_dns=server_dns,
        server_ips=server_ips,
        client_dns=list(args.client_dns),
        force=args.force,
    )
    _report(made)
    return 0


def _report(made: object) -> None:
    """Print what was made: files with modes, names, validity and the CA fingerprint (never keys)."""
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from ..tlsmaterial import TlsMaterial

    assert isinstance(made, TlsMaterial)
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    print(f"TLS material ({'two-way' if made.two_way else 'one-way'}) in {made.out_dir}/")
    paths = [made.ca_cert, made.ca_key, made.server_cert, made.server_key]
    if made.client_cert is not None and made.client_key is not None:
        paths += [made.client_cert, made.client_key]
    paths.append(made.ssl_cfg)
    for path in paths:
        mode = os.stat(path).st_mode & 0o777
        print(f"  {os.path.relpath(path, made.out_dir):<16} {mode:04o}")
    for label, path in (("server", made.server_cert), ("client", made.client_cert)):
        if path is None:
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        print(
            f"{label}: CN={cn}  SAN={', '.join(names)}  "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    print(
        f"CA: {ca.subject.rfc4514_string()}  valid until {ca.not_valid_after_utc:%Y-%m-%d}  "
        f"SHA-256 {ca.fingerprint(hashes.SHA256()).hex(':')}"
    )
    print(f"next: encrypt {made.ssl_cfg} with 'teeserve encrypt' before it goes to the TEE host")
