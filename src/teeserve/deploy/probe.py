"""Health probe for containers: ``python -m teeserve.deploy.probe URL`` (exit 0 = healthy).

Why not the orchestrator's own HTTP or gRPC probe: with ``client_verify: true`` in ``ssl.cfg`` the
server's REST port (and gRPC port) accept only clients with a certificate from the model owner's CA,
and kubelet's ``httpGet``/``grpc`` probes present none (the gRPC one cannot even speak TLS). This probe
runs next to the server in its container (outside the enclave), speaks TLS with a probe client
certificate when one is given (mounted from a Kubernetes Secret), verifies the server's certificate
against the CA, and reports the status of ``GET /v1/health/ready`` or ``/v1/health/live``.
``--tcp HOST:PORT`` only checks that a port accepts connections (the key broker).

Standard library only, so it starts in well under a second. Options default to ``TEESERVE_PROBE_CA``,
``TEESERVE_PROBE_CERT``, ``TEESERVE_PROBE_KEY`` and ``TEESERVE_PROBE_SERVER_NAME``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import urllib.parse
from collections.abc import Sequence

__all__ = ["main", "probe_http", "probe_tcp"]


def probe_tcp(address: str, timeout: float) -> tuple[bool, str]:
    """(ok, detail): does ``HOST:PORT`` accept a TCP connection?"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True, f"{address} accepts connections"
    except (OSError, ValueError) as exc:
        return False, f"{address}: {exc}"


def probe_http(url: str, *, ca: str | None, cert: str | None, key: str | None, server_name: str | None,
               timeout: float) -> tuple[bool, str]:
    """(ok, detail): does ``GET url`` answer 200? HTTPS verifies the server against ``ca``; the host
    name is checked only when ``server_name`` is given (the probe dials 127.0.0.1, the certificate
    names the service)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False, f"{url}: not an http(s) URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    try:
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            ctx.check_hostname = bool(server_name)
            if cert:
                ctx.load_cert_chain(cert, key)
            conn: http.client.HTTPConnection = _SNIConnection(parts.hostname, port, timeout=timeout, context=ctx,
                                                              server_name=server_name)
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read(4096)
        finally:
            conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return False, f"{url}: {exc}"
    return resp.status == 200, f"{url}: HTTP {resp.status}"


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to an address, checking the certificate for ``server_name`` when given."""

    def __init__(self, host: str, port: int, *, timeout: float, context: ssl.SSLContext,
                 server_name: str | None) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._server_name = server_name
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name or self.host)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m teeserve.deploy.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", help="e.g. https://127.0.0.1:8501/v1/health/ready")
    p.add_argument("--tcp", metavar="HOST:PORT", help="only check that the port accepts connections")
    p.add_argument("--ca", default=os.environ.get("TEESERVE_PROBE_CA"), help="CA of the server certificate")
    p.add_argument("--cert", default=os.environ.get("TEESERVE_PROBE_CERT"), help="client certificate (mTLS)")
    p.add_argument("--key", default=os.environ.get("TEESERVE_PROBE_KEY"), help="client key (mTLS)")
    p.add_argument("--server-name", default=os.environ.get("TEESERVE_PROBE_SERVER_NAME"),
                   help="name the server certificate must carry (default: not checked, the chain is)")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    if bool(args.url) == bool(args.tcp):
        p.error("give a URL or --tcp HOST:PORT")
    if args.tcp:
        ok, detail = probe_tcp(args.tcp, args.timeout)
    else:
        ok, detail = probe_http(args.url, ca=args.ca, cert=args.cert, key=args.key,
                                server_name=args.server_name, timeout=args.timeout)
    print(("healthy: " if ok else "unhealthy: ") + detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
