"""The policy in force, its generation, and safe reloads (SIGHUP or a changed file).

Strategy: a new policy must pass everything the first one passed — ``attest.load_policy`` (empty,
malformed or unknown keys fail closed), the default secret exists, every secret file can be read and
encoded in its declared format (the bytes are dropped at once), and DCAP secrets have a collateral
source — before it replaces the old one in a single reference swap. A rejected reload leaves the
**previous policy in force** (validated, and what the operator last meant) and is logged and counted
(``teeserve_broker_policy_reloads_total{result="rejected"}``, ``teeserve_broker_policy_stale`` = 1), so
a typo never turns into an outage nor into an open door. The file is polled by (mtime, size, inode).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..attest import Policy, PolicyInvalid, load_policy, read_secret
from ._extension import DEFAULT_SECRET

__all__ = ["PolicyHolder", "DEFAULT_SECRET", "validate_policy"]

log = logging.getLogger("teeserve.broker")


def validate_policy(policy: Policy, *, default_secret: str, have_collateral: bool) -> None:
    """The broker's extra start-up checks on a loaded policy.

    Raises:
        PolicyInvalid: no default secret, an unreadable/unsuitable secret file, or DCAP secrets
            without a collateral source (the message never holds secret bytes).
    """
    if default_secret not in policy.secrets:
        raise PolicyInvalid(
            policy.source, f"secrets.{default_secret}",
            f"missing: the broker sends the default secret {default_secret!r} to every attested client first "
            "(Gramine's SECRET_PROVISION_SET_KEY=default); add it or choose another with --default-secret",
        )  # fmt: skip
    for name, sp in policy.secrets.items():
        read_secret(policy, name)  # raises PolicyInvalid naming the file; the bytes are discarded
        if not have_collateral and sp.tee & {"sgx", "tdx"}:
            raise PolicyInvalid(
                policy.source, f"secrets.{name}.tee",
                f"allows {', '.join(sorted(sp.tee & {'sgx', 'tdx'}))} quotes but the broker has no "
                "collateral source (give --collateral FILE or --pccs-url URL)",
            )  # fmt: skip


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PolicyHolder:
    """Holds the policy in force; thread-safe reads (one attribute), serialized reloads.

    Args:
        path: the policy file (TOML, or the reference deployment's ``ra_config.json``).
        default_secret: the secret released on Gramine's plain request.
        have_collateral: whether DCAP quotes can be verified (a collateral source is configured).
        secret_file: for an ``ra_config.json`` policy, the wrap-key file (default ``wrap_key`` next to it).
        on_reload: ``callback(ok: bool, generation: int)`` after every reload attempt (metrics).

    Raises (constructor):
        PolicyInvalid: the initial policy is unusable (the broker must not start).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_secret: str = DEFAULT_SECRET,
        have_collateral: bool,
        secret_file: str | os.PathLike[str] | None = None,
        on_reload: Callable[[bool, int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.default_secret = default_secret
        self.have_collateral = have_collateral
        self.secret_file = secret_file
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._stat = _stat_key(self.path)
        self._policy = self._load()
        self.generation = 1
        self.stale = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def policy(self) -> Policy:
        return self._policy

    def _load(self) -> Policy:
        policy = load_policy(self.path, secret_file=self.secret_file)
        validate_policy(policy, default_secret=self.default_secret, have_collateral=self.have_collateral)
        return policy

    def reload(self, why: str = "requested") -> bool:
        """Load the file again; swap it in if valid. Returns whether the new policy is in force."""
        with self._lock:
            self._stat = _stat_key(self.path)
            try:
                policy = self._load()
            except Exception as exc:  # PolicyInvalid, or anything a bad edit provokes: keep watching
                if not isinstance(exc, PolicyInvalid):
                    log.exception("policy reload (%s): unexpected %s", why, type(exc).__name__)
                    exc = PolicyInvalid(self.path, "", f"cannot be loaded: {type(exc).__name__}: {exc}")
                self.stale = True
                self.last_error = str(exc)
                log.error(
                    "policy reload (%s) REJECTED, the previous policy (generation %d) stays in force: %s",
                    why, self.generation, exc,
                )  # fmt: skip
                ok = False
            else:
                self._policy = policy
                self.generation += 1
                self.stale = False
                self.last_error = None
                log.info("policy reloaded (%s): %s, generation %d, secrets: %s",
                         why, self.path, self.generation, ", ".join(sorted(policy.secrets)))  # fmt: skip
                ok = True
        if self._on_reload is not None:
            self._on_reload(ok, self.generation)
        return ok

    def changed(self) -> bool:
        """Whether the file's (mtime, size, inode) differs from the last load attempt."""
        return _stat_key(self.path) != self._stat

    def _settled(self, pause: float = 0.1) -> bool:
        """Whether the file has stopped changing: a save that truncates and then writes (``>``, many
        tools) can be seen half written, and would be logged as a REJECTED reload for nothing. A
        file still changing is looked at again on the next poll."""
        before = _stat_key(self.path)
        if self._stop.wait(pause):
            return False
        return _stat_key(self.path) == before

    def request_reload(self) -> None:
        """Ask the watcher thread to reload soon (safe to call from a signal handler)."""
        self._reload_requested.set()

    def start_watching(self, interval: float = 2.0) -> None:
        """Poll the file every ``interval`` seconds and serve :meth:`request_reload` in a thread."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                fired = self._reload_requested.wait(interval)
                if self._stop.is_set():
                    return
                if fired:
                    self._reload_requested.clear()
                    self.reload("SIGHUP")
                elif self.changed() and self._settled():
                    self.reload("file changed")

        self._thread = threading.Thread(target=loop, name="broker-policy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._reload_requested.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
