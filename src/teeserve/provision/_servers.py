"""The ``SECRET_PROVISION_SERVERS`` list syntax (gramine-formats.md §2.2)."""

from __future__ import annotations

import logging
import re

from ._errors import ServerListError

__all__ = ["DEFAULT_SERVERS", "parse_servers"]

DEFAULT_SERVERS = "localhost:4433"
_SEPARATORS = re.compile(r"[,; ]+")
log = logging.getLogger("teeserve.provision")


def parse_servers(servers: str) -> list[tuple[str, int]]:
    """Split a server list into ``(host, port)`` pairs, in order.

    Tokens are separated by any of ``,`` ``;`` or space and split at the first ``:``; tokens without a
    port are skipped, as Gramine does (so IPv6 literals are unsupported). A port that is not a number
    in 1..65535 is skipped too, with a warning.

    Raises:
        ServerListError: no usable entry.
    """
    entries: list[tuple[str, int]] = []
    for token in _SEPARATORS.split(servers.strip()):
        host, sep, port = token.partition(":")
        if not sep or not host or not port:
            continue
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            log.warning("provisioning server %r: port %r is not a number in 1..65535, skipped", token, port)
            continue
        entries.append((host, int(port)))
    if not entries:
        raise ServerListError(f"secret-provisioning server list {servers!r} has no usable host:port entry")
    return entries
