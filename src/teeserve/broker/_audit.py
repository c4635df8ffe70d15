"""The broker's audit log: every attestation attempt, append-only, in SQLite with a hash chain.

Strategy: one row per attempt (released or denied). Each row stores ``hash = SHA-256(prev_hash ||
canonical JSON of the row's fields)``, so editing, reordering or deleting a row in the middle breaks
the chain and ``verify()`` names the first bad row. Deleting rows at the *end* cannot be detected from
the table alone: ``head()`` gives the latest hash for operators to anchor elsewhere (e.g. in their
monitoring), and ``teeserve broker audit --verify --expect-head HASH`` checks against it.

The record carries measurements, TCB status, the rule that matched and the reason of a denial — never
secret bytes: the secret is identified by its policy name only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._errors import BrokerError

__all__ = ["AuditLog", "AuditRecord", "AuditChainBroken", "GENESIS"]

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    time         REAL    NOT NULL,
    peer         TEXT    NOT NULL,
    tee          TEXT    NOT NULL,
    simulated    INTEGER NOT NULL,
    measurements TEXT    NOT NULL,
    tcb_status   TEXT    NOT NULL,
    advisories   TEXT    NOT NULL,
    secret       TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    decision     TEXT    NOT NULL CHECK (decision IN ('released', 'denied')),
    reason       TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
)
"""

_FIELDS = ("time", "peer", "tee", "simulated", "measurements", "tcb_status", "advisories", "secret",
           "rule", "decision", "reason")


class AuditChainBroken(BrokerError):
    """The audit table does not verify: a row was changed, reordered or removed."""

    def __init__(self, path: str, seq: int, why: str) -> None:
        super().__init__(f"{path}: audit chain broken at row {seq}: {why}")
        self.seq = seq


@dataclass(frozen=True)
class AuditRecord:
    """One attestation attempt. ``tee`` reads ``sim (SIMULATED)`` for simulated evidence."""

    peer: str
    tee: str
    simulated: bool
    measurements: Mapping[str, Any]
    tcb_status: str
    advisories: tuple[str, ...]
    secret: str
    rule: str
    decision: str  # "released" | "denied"
    reason: str
    time: float = field(default_factory=time.time)

    def _columns(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = float(self.time)  # as the REAL column returns it, so that verify() hashes the same
        d["simulated"] = int(self.simulated)
        d["measurements"] = json.dumps(dict(self.measurements), sort_keys=True, separators=(",", ":"))
        d["advisories"] = json.dumps(list(self.advisories), separators=(",", ":"))
        return {k: d[k] for k in _FIELDS}


def _json_or_raw(value: Any, empty: Any) -> Any:
    """A JSON column as written by append(); an edited one that no longer parses is shown as it is
    (under ``"unreadable"``), so that listing a tampered log never fails: verify() names the row."""
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, type(empty)):
        return parsed
    return {"unreadable": repr(value)} if isinstance(empty, dict) else [f"unreadable: {value!r}"]


def _chain_hash(prev_hash: str, columns: Mapping[str, Any]) -> str:
    body = json.dumps({k: columns[k] for k in _FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only audit table. Thread-safe; every append is committed before it returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:  # a directory, not SQLite, no permission
            from ._errors import BrokerConfigError

            raise BrokerConfigError(f"--audit {self.path}: not a usable audit database ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, record: AuditRecord) -> str:
        """Append ``record``; returns its chain hash."""
        columns = record._columns()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                prev = row[0] if row else GENESIS
                digest = _chain_hash(prev, columns)
                self._db.execute(
                    f"INSERT INTO audit ({', '.join(_FIELDS)}, prev_hash, hash) "
                    f"VALUES ({', '.join('?' for _ in _FIELDS)}, ?, ?)",
                    [columns[k] for k in _FIELDS] + [prev, digest],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return digest

    def rows(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                f"SELECT seq, {', '.join(_FIELDS)}, prev_hash, hash FROM audit ORDER BY seq")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in rows:
            r["simulated"] = bool(r["simulated"])
            r["measurements"] = _json_or_raw(r["measurements"], {})
            r["advisories"] = _json_or_raw(r["advisories"], [])
            yield r

    def head(self) -> str:
        with self._lock:
            row = self._db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row else GENESIS

    def verify(self, expect_head: str | None = None) -> int:
        """Check the whole chain; returns the number of rows. Raises AuditChainBroken."""
        prev = GENESIS
        count = 0
        with self._lock:
            cur = self._db.execute(f"SELECT seq, {', '.join(_FIELDS)}, prev_hash, hash FROM audit ORDER BY seq")
            for row in cur:
                seq = row[0]
                columns = dict(zip(_FIELDS, row[1:1 + len(_FIELDS)]))
                stored_prev, stored_hash = row[-2], row[-1]
                if stored_prev != prev:
                    raise AuditChainBroken(self.path, seq, "previous-hash link does not match (row removed or reordered)")
                try:
                    digest = _chain_hash(prev, columns)
                except (TypeError, ValueError):  # a value of a type append() never writes (e.g. a blob)
                    raise AuditChainBroken(self.path, seq, "row content malformed (row edited)") from None
                if digest != stored_hash:
                    raise AuditChainBroken(self.path, seq, "row content does not match its hash (row edited)")
                prev = stored_hash
                count += 1
        if expect_head is not None and prev != expect_head:
            raise AuditChainBroken(self.path, count, f"head is {prev}, expected {expect_head} (rows removed at the end?)")
        return count
