"""`teeserve demo` (= `make demo`) end to end with the small model (issue 5 §3)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_every_step(tmp_path) -> None:
    out_dir = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "teeserve", "demo", "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for heading in ("1. model owner", "2. model owner: key broker", "3. TEE host", "4. remote requester",
                    "5. model owner: audit and denial", "6. everyone"):
        assert f"=== {heading} " in out
    assert "summary: cnum 4, batch 1" in out
    assert "was DENIED and exited with status" in out
    assert "server stopped (exit status 0)" in out and "broker stopped (exit status 0)" in out
    answer = [line for line in out.splitlines() if "answer:" in line][0]
    got, shown = answer.split("answer: ")[1].split(" ")[0], answer.rsplit(" ", 1)[1]
    assert got == shown
    for path in ("owner/wrap_key", "owner/policy.toml", "owner/audit.db", "host/ssl.cfg", "requester/bench.png"):
        assert (out_dir / path).exists(), path
    assert (out_dir / "owner" / "wrap_key").stat().st_mode & 0o777 == 0o600


def test_demo_refuses_a_folder_it_did_not_make(tmp_path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "teeserve", "demo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "was not made by `teeserve demo`" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
