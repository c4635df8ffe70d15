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


def test_rate_limiter_refills_with_injected_clock() -> None:
    now = [0.0]
    rl = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    assert rl.allow("a") and rl.allow("a") and not rl.allow("a")
    assert rl.allow("b")  # other peers are not affected
    now[0] = 1.0
    assert rl.allow("a") and not rl.allow("a")
