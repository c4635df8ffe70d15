"""Get the wrap key by attestation at enclave start and put it where the chosen key path needs it.

Strategy: the same steps as Gramine's ``libsecret_prov_attest.so`` constructor, in teeserve's own code:
make an RA-TLS certificate over a fresh key with a quote from the evidence provider
(``/dev/attestation`` inside Gramine), connect to the first reachable broker of
``SECRET_PROVISION_SERVERS``, check it against ``SECRET_PROVISION_CA_CHAIN_PATH`` and its host name,
receive the secret (16 raw bytes). Then, by key path:

- ``gramine-mounts``: write the key with one ``write()`` to ``/dev/attestation/keys/<name>``, where
  Gramine's encrypted mounts with that ``key_name`` pick it up;
- ``in-process``: hand it to ``teeserve serve`` run in this process, as a Python object (no file, no
  file descriptor: Gramine's library OS has no ``memfd_create``).

A broker that is not reachable yet (a pod starting before its broker) is retried with capped
exponential backoff; a denial is final (exit non-zero, the orchestrator restarts and the audit log
shows why). The key never reaches a log line or an error message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ProvisionSettings", "obtain_wrap_key", "install_gramine_key"]

log = logging.getLogger("teeserve.deploy.provision")


@dataclass(frozen=True)
class ProvisionSettings:
    """Where to get the key from and how hard to try (``servers`` in ``SECRET_PROVISION_SERVERS`` form)."""

    servers: str
    ca_path: str
    timeout: float = 10.0
    retries: int = 30
    backoff_max: float = 5.0
    key_type: str = "ec-p384"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ProvisionSettings:
        """``SECRET_PROVISION_SERVERS`` / ``SECRET_PROVISION_CA_CHAIN_PATH`` (as Gramine's library reads
        them), then ``overrides`` (options given on the command line win).

        Raises:
            ProvisionError: no CA file is named.
        """
        from ..provision import DEFAULT_SERVERS, ProvisionError

        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "servers": env.get("SECRET_PROVISION_SERVERS") or DEFAULT_SERVERS,
            "ca_path": env.get("SECRET_PROVISION_CA_CHAIN_PATH", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["ca_path"]:
            raise ProvisionError(
                "no CA for the key broker: set SECRET_PROVISION_CA_CHAIN_PATH (the manifest does) or --broker-ca"
            )
        return cls(**values)


def obtain_wrap_key(
    settings: ProvisionSettings,
    provider: Any,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> bytes:
    """Attest with ``provider``'s quotes and return the 16-byte wrap key the broker releases.

    Raises:
        ProvisionConnectError: no broker reachable after ``settings.retries`` retries.
        ProvisionDenied, ProvisionTLSError, RemoteProtocolError, SecretFormatError: final failures.
        EvidenceError: the TEE could not produce a quote.
    """
    import asyncio

    from ..attest.ratls import make_certificate, validity_from_env
    from ..provision import ProvisionConnectError, decode_secret, fetch_secret

    not_before, not_after = validity_from_env()
    delay = 0.2
    attempt = 0
    while True:
        # A fresh key and quote per attempt: the certificate is never reused across sessions.
        credentials = make_certificate(provider, key_type=settings.key_type,
                                       not_before=not_before, not_after=not_after)
        try:
            secret = asyncio.run(fetch_secret(settings.servers, settings.ca_path, credentials,
                                              timeout=settings.timeout))
        except ProvisionConnectError as exc:
            attempt += 1
            if attempt > settings.retries:
                raise
            log.warning("key broker not reachable, retrying", extra={"attempt": attempt, "in_s": round(delay, 2),
                                                                     "cause": str(exc)})
            sleep(delay)
            delay = min(delay * 2, settings.backoff_max)
            continue
        return decode_secret(secret, "raw")


def install_gramine_key(key: bytes, name: str, root: str | os.PathLike[str] = "/dev/attestation") -> None:
    """Install ``key`` as Gramine's encrypted-files key ``name`` (one 16-byte write to ``keys/<name>``)."""
    from ..provision import write_key_to_gramine

    write_key_to_gramine(key, name, root)

