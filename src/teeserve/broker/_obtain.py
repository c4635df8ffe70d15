"""The TEE side of key release: attest to the broker and obtain named secrets (issue 4 §6).

Strategy: one attempt = a fresh RA-TLS key and certificate from the evidence provider, one TLS
session with ``provision.open_session`` (the broker is checked against ``broker_ca`` and the host
name dialled), the default secret of Gramine's protocol, then the other names over teeserve's
named-secret extension (``_extension``) on the same attested session. While the broker cannot be
reached (connection refused, connect/handshake/read timeouts) the attempt is repeated with
exponential backoff until the deadline; a denial is final and raises :class:`KeyReleaseDenied`
at once (retrying cannot change a policy decision, and would only fill the broker's audit).
A TLS failure (a broker certificate not from ``broker_ca``, a host-name mismatch) is not retried either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import provision
from .._errors import UsageError
from ..attest import ratls
from ..attest.evidence import get_provider
from ._errors import BrokerUnreachable, ExtensionProtocolError, KeyReleaseDenied
from ._extension import DEFAULT_SECRET, ResponseParser, encode_request

__all__ = ["obtain_secrets", "obtain_from_env"]

log = logging.getLogger("teeserve.broker.obtain")

_RETRYABLE = (provision.ProvisionConnectError, provision.ProvisionTimeout)


def _provider(tee: str, sim_key: str | None, config: bytes, options: Mapping[str, Any] | None) -> Any:
    opts = dict(options or {})
    if tee == "sim":
        if sim_key is None and "key_path" not in opts:
            raise UsageError("tee='sim' needs sim_key (the simulation private key, 'teeserve sim init')")
        opts.setdefault("key_path", sim_key)
        opts.setdefault("config", config)
    return get_provider(tee, **opts)


async def _named(session: Any, names: Sequence[str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    parser = ResponseParser()
    where = f"{session.server[0]}:{session.server[1]}"
    for name in names:
        closed = ExtensionProtocolError(
            f"{where}: the server closed the session before answering the request for secret {name!r} "
            "(does it support teeserve's named-secret extension?)"
        )
        answers: list[bytes | None] = []
        try:
            await session.send(encode_request(name))
            while not answers:
                data = await session.receive()
                if not data:
                    raise closed
                answers = parser.feed(data)
        except (ConnectionError, ssl.SSLError, provision.ProvisionDenied) as exc:
            raise closed from exc
        if len(answers) != 1:
            raise ExtensionProtocolError(f"{where}: the server sent more answers than requests")
        if answers[0] is None:
            raise KeyReleaseDenied(name)
        out[name] = answers[0]
    return out


async def obtain_secrets(
    *,
    tee: str,
    broker: str,
    broker_ca: str | os.PathLike[str],
    secrets: Sequence[str] = (DEFAULT_SECRET,),
    sim_key: str | os.PathLike[str] | None = None,
    config: bytes = b"",
    deadline: float | None = None,
    backoff: tuple[float, float] = (0.5, 8.0),
    timeout: float = provision.DEFAULT_TIMEOUT,
    default_secret: str = DEFAULT_SECRET,
    provider_options: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """Attest to the key broker and return ``{name: secret bytes}`` for every name in ``secrets``.

    Args:
        tee: ``"gramine"``, ``"tdx"`` or ``"sim"`` (the evidence provider, ``attest.evidence.get_provider``).
        broker: ``HOST:PORT`` (or a ``SECRET_PROVISION_SERVERS`` list: the first that accepts is used).
        broker_ca: CA file (PEM/DER) the broker's TLS certificate must chain to; the host name is checked.
        secrets: the names wanted. The broker always sends its default secret first (Gramine's
            protocol); it is returned only if ``default_secret`` is among ``secrets``. The others are
            asked for by name on the same attested session.
        sim_key: for ``tee="sim"``: the simulation private key file (``teeserve sim init``).
        config: for ``tee="sim"``: configuration bytes measured with the code (the simulated MRENCLAVE).
        deadline: give up after this many seconds of retrying (``None``: keep trying).
        backoff: (first, maximum) delay in seconds between attempts; doubles each time.
        timeout: seconds for each connect, handshake and read.
        provider_options: extra options for the evidence provider (e.g. ``root=`` of a pseudo-file tree).

    Secrets are returned as delivered (a ``raw`` key is 16 bytes, a ``hex`` one 32 hex digits + NUL;
    ``provision.decode_secret`` turns the latter into the key).

    Raises:
        KeyReleaseDenied: the broker refused (not retried); ``.secret`` names the secret.
        BrokerUnreachable: no broker answered before the deadline.
        ProvisionTLSError: the broker's certificate is not from ``broker_ca`` or has another host name.
        ProvisionError, ExtensionProtocolError, EvidenceError, UsageError: other failures (not retried).
        ValueError: no secret asked for, an invalid secret name, or a bad ``backoff``.
    """
    names = list(dict.fromkeys(secrets))
    if not names:
        raise ValueError("ask for at least one secret")
    for n in names:
        encode_request(n)  # validates the name (ValueError)
    first, cap = backoff
    if first <= 0 or cap < first:
        raise ValueError("backoff must be (first > 0, maximum >= first)")
    provider = await asyncio.to_thread(_provider, tee, os.fspath(sim_key) if sim_key else None, config,
                                       provider_options)  # fmt: skip
    give_up = None if deadline is None else time.monotonic() + deadline
    delay = first
    attempt = 0
    while True:
        attempt += 1
        credentials = await asyncio.to_thread(ratls.make_certificate, provider)  # fresh key per attempt
        try:
            async with provision.open_session(broker, broker_ca, credentials, timeout=timeout) as session:
                got: dict[str, bytes] = {}
                if default_secret in names:
                    got[default_secret] = session.secret
                got.update(await _named(session, [n for n in names if n != default_secret]))
        except provision.ProvisionDenied as exc:
            raise KeyReleaseDenied(default_secret, str(exc)) from exc
        except _RETRYABLE as exc:
            left = None if give_up is None else give_up - time.monotonic()
            if left is not None and left <= 0:
                raise BrokerUnreachable(
                    f"key broker {broker} unreachable after {attempt} attempt(s) in {deadline} s: {exc}"
                ) from exc
            wait = delay * random.uniform(0.8, 1.0)
            if left is not None:
                wait = min(wait, left)
            log.warning("key broker %s unreachable (attempt %d: %s); retrying in %.1f s",
                        broker, attempt, exc, wait)  # fmt: skip
            await asyncio.sleep(wait)
            delay = min(delay * 2, cap)
            continue
        log.info("obtained %d secret(s) from the key broker %s after %d attempt(s): %s",
                 len(got), broker, attempt, ", ".join(sorted(got)))  # fmt: skip
        return got


async def obtain_from_env(
    *,
    tee: str,
    environ: Mapping[str, str] | None = None,
    secrets: Sequence[str] | None = None,
    sim_key: str | os.PathLike[str] | None = None,
    config: bytes = b"",
    deadline: float | None = None,
    backoff: tuple[float, float] = (0.5, 8.0),
    attestation_root: str | os.PathLike[str] = "/dev/attestation",
    provider_options: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """:func:`obtain_secrets` configured by Gramine's variables, as ``libsecret_prov_attest.so`` is.

    ``SECRET_PROVISION_SERVERS`` (default ``localhost:4433``) and ``SECRET_PROVISION_CA_CHAIN_PATH``
    (required) pick and check the broker. With ``SECRET_PROVISION_SET_KEY=NAME`` (or the legacy
    ``SECRET_PROVISION_SET_PF_KEY``) and ``tee="gramine"``, the default secret must be 16 raw bytes and
    is installed as Gramine's encrypted-files key ``NAME`` under ``attestation_root`` (one write).

    Raises:
        ProvisionError: ``SECRET_PROVISION_CA_CHAIN_PATH`` is not set; otherwise as :func:`obtain_secrets`.
    """
    client = provision.client_from_env(environ)
    wanted = list(secrets) if secrets else [DEFAULT_SECRET]
    if client.set_key and DEFAULT_SECRET not in wanted:
        wanted.insert(0, DEFAULT_SECRET)
    got = await obtain_secrets(
        tee=tee, broker=client.servers, broker_ca=client.ca_path, secrets=wanted, sim_key=sim_key,
        config=config, deadline=deadline, backoff=backoff, provider_options=provider_options,
    )  # fmt: skip
    if client.set_key and tee == "gramine":
        key = provision.decode_secret(got[DEFAULT_SECRET], "raw")
        await asyncio.to_thread(provision.write_key_to_gramine, key, client.set_key, attestation_root)
        log.info("installed the default secret as Gramine key %r", client.set_key)
    return got
