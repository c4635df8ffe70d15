from __future__ import annotations

import sqlite3

import pytest

from teeserve.broker._audit import GENESIS, AuditChainBroken, AuditLog, AuditRecord
from teeserve.broker._ratelimit import RateLimiter


def _rec(i: int, decision: str = "released") -> AuditRecord:
    return AuditRecord(peer=f"127.0.0.1:{1000 + i}", tee="sgx", simulated=False,
                       measurements={"mr_enclave": f"{i:064x}"}, tcb_status="UpToDate", advisories=(),
                       secret="model-key", rule="sgx[0]", decision=decision, reason="" if decision == "released" else "no rule matched")


def test_chain_appends_and_verifies(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    assert log.head() == GENESIS and log.verify() == 0
    hashes = [log.append(_rec(i)) for i in range(5)]
    assert log.head() == hashes[-1]
    assert log.verify(expect_head=hashes[-1]) == 5
    rows = list(log.rows())
    assert [r["peer"] for r in rows] == [f"127.0.0.1:{1000 + i}" for i in range(5)]
    assert rows[0]["prev_hash"] == GENESIS and rows[1]["prev_hash"] == hashes[0]


@pytest.mark.parametrize("attack", ["edit", "delete_middle", "delete_tail"])
def test_tampering_is_detected(tmp_path, attack: str) -> None:
    path = tmp_path / "audit.db"
    log = AuditLog(path)
    for i in range(4):
        log.append(_rec(i, "denied" if i % 2 else "released"))
    head = log.head()
    log.close()
    db = sqlite3.connect(path)
    if attack == "edit":
        db.execute("UPDATE audit SET decision='released' WHERE seq=2")
    elif attack == "delete_middle":
        db.execute("DELETE FROM audit WHERE seq=2")
    else:
        db.execute("DELETE FROM audit WHERE seq=4")
    db.commit()
    db.close()
    log = AuditLog(path)
    with pytest.raises(AuditChainBroken):
        log.verify(expect_head=head)


def test_a_record_with_an_integer_time_verifies(tmp_path) -> None:
    """An integer clock (a replayed vector's now, a test's fixed clock) must hash as the REAL column
    reads it back, or an untouched log would fail verification."""
    log = AuditLog(tmp_path / "audit.db")
    digest = log.append(AuditRecord(**{**_rec(0).__dict__, "time": 1700000000}))
    assert log.verify(expect_head=digest) == 1


@pytest.mark.parametrize("edit", ["UPDATE audit SET measurements='edited' WHERE seq=2",
                                  "UPDATE audit SET peer=CAST(peer AS BLOB) WHERE seq=2",
                                  "UPDATE audit SET advisories='{' WHERE seq=2"])
def test_a_malformed_row_is_a_broken_chain_not_a_crash(tmp_path, edit: str) -> None:
    import subprocess
    import sys

    path = tmp_path / "audit.db"
    log = AuditLog(path)
    for i in range(3):
        log.append(_rec(i))
    log.close()
    with sqlite3.connect(path) as db:
        db.execute(edit)
    db.close()
    log = AuditLog(path)
    try:
        with pytest.raises(AuditChainBroken) as broken:
            log.verify()
        assert broken.value.seq == 2
        assert len(list(log.rows())) == 3  # listing a tampered log still works
    finally:
        log.close()
    cli = subprocess.run([sys.executable, "-m", "teeserve", "broker", "audit", "--audit", str(path), "--verify"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1, cli.stderr
    assert "audit chain BROKEN" in cli.stderr and "row 2" in cli.stderr and "Traceback" not in cli.stderr


def test_rate_limiter_refills_with_injected_clock() -> None:
    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    assert rl.allow("a") and rl.allow("a") and not rl.allow("a")
    assert rl.allow("b")  # other peers are not affected
    now[0] = 1.0
    assert rl.allow("a") and not rl.allow("a")
