"""Operating the broker: policy start-up checks and reloads, the audit CLI, metrics, secrets never
leaking, the TEE side's retry/backoff, and a real ``python -m teeserve broker`` subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from teeserve.attest import PolicyInvalid
from teeserve.broker import BrokerUnreachable, KeyReleaseDenied, PolicyHolder, obtain_from_env
from teeserve.cli import main

from _broker_helpers import (
    CONFIG, DEFAULT_KEY, HEX_KEY, MODEL_KEY, MR_ENCLAVE, SECRETS, obtain, policy_text,
)  # fmt: skip


def _wait(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# ---- policy at start and on reload ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty policy file"),
        ("version = 1\n[secrets.default\n", "not valid TOML"),
        ('version = 1\n[secrets.default]\nfile = "default.key"\ntee = ["sim"]\nallow_simulation = true\n'
         'allow_debug = true\n', "no switch"),
        ("version = 1\nsecrets = {}\n", "at least one secret"),
    ],
    ids=["empty", "malformed", "unknown-key", "no-secrets"],
)  # fmt: skip
def test_bad_policy_fails_closed_at_start(broker_dir: Path, pki: Any, capsys: Any, text: str, message: str) -> None:
    (broker_dir / "policy.toml").write_text(text)
    code = main(["broker", "--policy", str(broker_dir / "policy.toml"), "--listen", "127.0.0.1:0",
                 "--cert", str(pki.cert), "--key", str(pki.key), "--audit", str(broker_dir / "a.db")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "invalid policy" in err and message in err and str(broker_dir / "policy.toml") in err
    assert not (broker_dir / "a.db").exists()  # nothing started


def test_cli_usage_errors(broker_dir: Path, pki: Any, capsys: Any) -> None:
    assert main(["broker"]) == 2
    assert "needs --policy, --cert, --key" in capsys.readouterr().err
    base = ["broker", "--policy", str(broker_dir / "policy.toml"), "--cert", str(pki.cert), "--key", str(pki.key)]
    assert main([*base, "--listen", "nowhere"]) == 2
    assert "--listen: expected HOST:PORT" in capsys.readouterr().err
    assert main([*base, "--listen", "127.0.0.1:0", "--pccs-ca", str(pki.ca)]) == 2
    assert "--pccs-ca needs --pccs-url" in capsys.readouterr().err
    assert main([*base, "--listen", "127.0.0.1:0", "--pccs-url", "http://pccs.example:8081"]) == 2
    assert "https" in capsys.readouterr().err
    assert main([*base, "--listen", "127.0.0.1:0", "--collateral", str(broker_dir / "missing.json")]) != 0
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--rate", "nan"], "--rate must be a finite number > 0 (got nan)"),
    (["--rate", "inf"], "--rate must be a finite number > 0 (got inf)"),
    (["--timeout", "nan"], "--timeout must be a finite number of seconds > 0, got nan"),
    (["--timeout", "inf"], "--timeout must be a finite number of seconds > 0, got inf"),
    (["--reload-interval", "nan"], "--reload-interval must be a finite number of seconds > 0, got nan"),
    (["--timeout", "0"], "--timeout must be a finite number of seconds > 0, got 0"),
    (["--max-clients-per-address", "-1"], "--max-clients-per-address must be 0 (no limit) or positive"),
])
def test_non_finite_limits_are_usage_errors(broker_dir: Path, pki: Any, capsys: Any, flags: list[str],
                                            message: str) -> None:
    """nan passed the old `<= 0` checks: --rate nan let every attempt through, --reload-interval nan
    spun a core, --timeout inf removed the limit on slow clients."""
    base = ["broker", "--policy", str(broker_dir / "policy.toml"), "--cert", str(pki.cert), "--key", str(pki.key),
            "--listen", "127.0.0.1:0", "--audit", str(broker_dir / "a.db")]
    assert main([*base, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (broker_dir / "a.db").exists()  # nothing started


def test_unusable_audit_database_is_named(broker_dir: Path, pki: Any, capsys: Any) -> None:
    """Used to be an internal error (exit 70) without the file's name."""
    not_db = broker_dir / "not.db"
    not_db.write_bytes(b"this is no SQLite database, just text " * 40)
    assert main(["broker", "audit", "--audit", str(not_db)]) == 2
    err = capsys.readouterr().err
    assert f"--audit {not_db}: not a usable audit database" in err and "Traceback" not in err, err
    base = ["broker", "--policy", str(broker_dir / "policy.toml"), "--cert", str(pki.cert), "--key", str(pki.key),
            "--listen", "127.0.0.1:0"]
    for target in (not_db, broker_dir):  # a file that is not SQLite; a directory
        assert main([*base, "--audit", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"--audit {target}: not a usable audit database" in err and err.count("\n") == 1, err


def edit_audit(run: Any, sql: str) -> None:
    """Stop the broker and change its audit table behind its back (a tampering operator)."""
    run.server.stop()
    run.audit.close()
    con = sqlite3.connect(run.dir / "audit.db")
    con.execute(sql)
    con.commit()
    con.close()


def test_audit_listing_survives_an_edited_time_column(start_broker, pki, sim_keys, capsys) -> None:
    run = start_broker()
    obtain(run.addr, pki.ca, sim_keys.key)
    db = str(run.dir / "audit.db")
    edit_audit(run, "UPDATE audit SET time = 'yesterday'")
    capsys.readouterr()
    assert main(["broker", "audit", "--audit", db, "--verify"]) == 1
    cap = capsys.readouterr()
    assert "(unreadable time 'yesterday')" in cap.out and "audit chain BROKEN" in cap.err, cap


def test_a_policy_edit_that_breaks_the_parser_does_not_stop_reloads(start_broker, pki, sim_keys, caplog) -> None:
    """Arrays nested thousands deep raised RecursionError, and a NUL byte in a secret's path
    ValueError: either ended the watcher thread, and later edits (revocations) were ignored."""
    run = start_broker()
    run.holder.start_watching(0.05)
    good_text = run.policy_path.read_text()
    run.policy_path.write_text(good_text + "\ndeep = " + "[" * 5000 + "]" * 5000 + "\n")
    _wait(lambda: run.holder.stale)
    assert "nested too deeply" in (run.holder.last_error or "")
    assert obtain(run.addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}  # the old policy still serves
    run.policy_path.write_text(good_text.replace(MR_ENCLAVE.hex(), "77" * 32, 1))  # a revocation, later
    _wait(lambda: run.holder.generation == 2)
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key)


def test_a_policy_file_still_being_written_is_not_judged_yet(broker_dir: Path) -> None:
    import threading

    path = broker_dir / "policy.toml"
    holder = PolicyHolder(path, have_collateral=False)
    assert holder._settled(pause=0.05)  # nobody writes: settled
    text = path.read_text()
    path.write_text("")  # a save that truncated first ...
    t = threading.Timer(0.1, lambda: path.write_text(text + "\n"))  # ... and writes during the pause
    t.start()
    try:
        assert holder.changed() and not holder._settled(pause=0.6)
    finally:
        t.join()
    assert holder.changed() and holder._settled(pause=0.05) and holder.reload("test")
    assert holder.generation == 2 and not holder.stale


def test_secret_file_with_a_toml_policy_is_refused(broker_dir: Path) -> None:
    with pytest.raises(PolicyInvalid, match="--secret-file applies to an ra_config.json policy only"):
        PolicyHolder(broker_dir / "policy.toml", have_collateral=False, secret_file=str(broker_dir / "k"))


def test_missing_default_secret_or_key_file_or_collateral(broker_dir: Path, sim_keys: Any, mr_enclave: str) -> None:
    path = broker_dir / "policy.toml"
    text = policy_text(sim_keys, mr_enclave)
    path.write_text(text.replace("[secrets.default]", "[secrets.other]").replace("[[secrets.default.sim]]",
                                                                                  "[[secrets.other.sim]]"))  # fmt: skip
    with pytest.raises(PolicyInvalid, match="secrets.default: missing"):
        PolicyHolder(path, have_collateral=False)
    path.write_text(text)
    (broker_dir / "hex.key").unlink()
    with pytest.raises(PolicyInvalid, match="secrets.hex-key.file.*cannot read"):
        PolicyHolder(path, have_collateral=False)
    (broker_dir / "hex.key").write_bytes(b"short")
    with pytest.raises(PolicyInvalid, match="16-byte key"):
        PolicyHolder(path, have_collateral=False)
    (broker_dir / "hex.key").write_bytes(HEX_KEY)
    path.write_text(text + f'[secrets.sgx-key]\nfile = "model.key"\ntee = ["sgx"]\n[[secrets.sgx-key.sgx]]\n'
                           f'mr_enclave = "{"ab" * 32}"\n')  # fmt: skip
    with pytest.raises(PolicyInvalid, match="no collateral source"):
        PolicyHolder(path, have_collateral=False)
    assert PolicyHolder(path, have_collateral=True).policy.secret("sgx-key")


def test_reload_on_file_change_and_bad_reload_keeps_the_old_policy(start_broker, pki, sim_keys, caplog) -> None:
    run = start_broker()
    run.holder.start_watching(0.05)
    assert obtain(run.addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}
    # a bad new policy: rejected, the previous one stays in force
    good_text = run.policy_path.read_text()
    run.policy_path.write_text(good_text + "\nthis is not toml\n")
    _wait(lambda: run.holder.stale)
    assert "policy reload (file changed) REJECTED" in caplog.text and run.holder.generation == 1
    assert obtain(run.addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}
    text = run.metrics.render().decode()
    assert 'teeserve_broker_policy_reloads_total{result="rejected"} 1.0' in text
    assert "teeserve_broker_policy_stale 1.0" in text
    # a good new policy that no longer admits this MRENCLAVE: in force without restart
    run.policy_path.write_text(good_text.replace(MR_ENCLAVE.hex(), "77" * 32, 1))
    _wait(lambda: run.holder.generation == 2)
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key)
    text = run.metrics.render().decode()
    assert "teeserve_broker_policy_generation 2.0" in text and "teeserve_broker_policy_stale 0.0" in text
    assert 'teeserve_broker_policy_reloads_total{result="ok"} 1.0' in text


def test_reload_between_named_requests_uses_the_new_policy(start_broker, pki, sim_keys) -> None:
    """Named requests are judged under the policy in force when each arrives."""
    run = start_broker()
    assert obtain(run.addr, pki.ca, sim_keys.key, ("default", "hex-key"))["hex-key"] == HEX_KEY.hex().encode() + b"\0"
    text = run.policy_path.read_text()
    run.policy_path.write_text(text.replace("[[secrets.hex-key.sim]]\nmr_enclave = \"" + MR_ENCLAVE.hex(),
                                            "[[secrets.hex-key.sim]]\nmr_enclave = \"" + "00" * 32))  # fmt: skip
    assert run.holder.reload("test")
    with pytest.raises(KeyReleaseDenied) as info:
        obtain(run.addr, pki.ca, sim_keys.key, ("default", "hex-key"))
    assert info.value.secret == "hex-key"


# ---- audit ----------------------------------------------------------------------------------------


def test_audit_cli_prints_verifies_and_detects_tampering(start_broker, pki, sim_keys, capsys) -> None:
    run = start_broker()
    obtain(run.addr, pki.ca, sim_keys.key, ("default", "hex-key"))
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key, ("default", "nope"))
    head = run.audit.head()
    db = str(run.dir / "audit.db")
    capsys.readouterr()
    assert main(["broker", "audit", "--audit", db, "--verify", "--expect-head", head]) == 0
    out = capsys.readouterr().out
    assert "audit chain OK: 4 rows" in out and "DENIED secret=nope" in out and "reason: policy has no secret" in out
    assert out.count("SIMULATED") >= 4 and f"mr_enclave={MR_ENCLAVE.hex()}" in out
    assert main(["broker", "audit", "--audit", db, "--json", "--tail", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 1 and doc["rows"][0]["secret"] == "nope" and doc["head"] == head
    assert main(["broker", "audit", "--audit", db, "--verify", "--expect-head", "0" * 64]) == 1
    edit_audit(run, "UPDATE audit SET decision = 'released', reason = 'released' WHERE secret = 'nope'")
    capsys.readouterr()
    assert main(["broker", "audit", "--audit", db, "--verify"]) == 1
    assert "audit chain BROKEN" in capsys.readouterr().err
    assert main(["broker", "audit", "--audit", str(run.dir / "missing.db")]) == 2


# ---- secrets never leak ---------------------------------------------------------------------------


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode()]


def assert_no_secret(blob: bytes, where: str) -> None:
    for s in SECRETS:
        for form in _forms(s):
            assert form not in blob, f"secret bytes ({form[:4]!r}...) found in {where}"


def test_secrets_never_reach_logs_audit_metrics_or_errors(start_broker, pki, sim_keys, caplog) -> None:
    run = start_broker()
    errors: list[str] = []
    got = obtain(run.addr, pki.ca, sim_keys.key, ("default", "hex-key"))
    got.update(obtain(run.addr, pki.ca, sim_keys.key, ("model-key",), provider_options={"isv_prod_id": 7, "isv_svn": 3}))
    assert got == {"default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0", "model-key": MODEL_KEY}
    for wanted, opts in ((("default", "nope"), {}), (("model-key",), {"provider_options": {"isv_prod_id": 1}}),
                         (("default",), {"provider_options": {"mr_enclave": bytes(32)}})):  # fmt: skip
        with pytest.raises(KeyReleaseDenied) as info:
            obtain(run.addr, pki.ca, sim_keys.key, wanted, **opts)
        errors.append(str(info.value))
    assert len(run.rows()) == 9  # 2 + 2 released, then (released, denied) twice and one denial
    run.server.stop()
    run.audit.close()
    assert_no_secret(caplog.text.encode(), "the log")
    for f in run.dir.glob("audit.db*"):
        assert_no_secret(f.read_bytes(), f.name)
    assert_no_secret(run.metrics.render(), "the metrics")
    assert_no_secret("\n".join(errors).encode(), "the client's errors")
    assert "SIMULATED" in caplog.text


# ---- the TEE side: retries while unreachable, none on denial --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_retry_with_backoff_until_the_broker_is_up(start_broker, pki, sim_keys, caplog) -> None:
    port = _free_port()
    result: dict[str, Any] = {}

    def client() -> None:
        try:
            result["got"] = obtain(f"127.0.0.1:{port}", pki.ca, sim_keys.key, ("default", "hex-key"),
                                   backoff=(0.1, 0.4), deadline=30)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=client)
    t.start()
    _wait(lambda: caplog.text.count("unreachable") >= 2)
    run = start_broker(port=port)
    t.join(30)
    assert result.get("got") == {"default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0"}, result
    assert re.search(r"key broker 127\.0\.0\.1:\d+ unreachable \(attempt 2: .*\); retrying in 0\.\d s", caplog.text)
    assert [r["decision"] for r in run.rows()] == ["released", "released"]


def test_unreachable_until_the_deadline(pki, sim_keys) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match="unreachable after"):
        obtain(f"127.0.0.1:{_free_port()}", pki.ca, sim_keys.key, backoff=(0.05, 0.1), deadline=0.5)
    assert time.monotonic() - started < 10


def test_no_retry_on_denial(start_broker, pki, sim_keys, caplog) -> None:
    run = start_broker()
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key, backoff=(0.05, 0.1), deadline=30,
               provider_options={"mr_enclave": bytes(32)})  # fmt: skip
    assert len(run.rows()) == 1 and "retrying" not in caplog.text


def test_obtain_from_gramine_environment(start_broker, pki, sim_keys) -> None:
    run = start_broker()
    env = {"SECRET_PROVISION_SERVERS": f"nohost;{run.addr}", "SECRET_PROVISION_CA_CHAIN_PATH": str(pki.ca)}
    got = asyncio.run(obtain_from_env(tee="sim", environ=env, secrets=("default", "hex-key"), sim_key=sim_keys.key,
                                      config=CONFIG, provider_options={"mr_enclave": MR_ENCLAVE}))  # fmt: skip
    assert got == {"default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0"}
    from teeserve.provision import ProvisionError

    with pytest.raises(ProvisionError, match="SECRET_PROVISION_CA_CHAIN_PATH"):
        asyncio.run(obtain_from_env(tee="sim", environ={}, sim_key=sim_keys.key))


# ---- a real broker process --------------------------------------------------------------------------


def _line(path: Path, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the broker's log:\n{path.read_text(errors='replace')}")


def test_subprocess_broker_sighup_reload_metrics_and_no_leaks(broker_dir: Path, pki: Any, sim_keys: Any) -> None:
    import httpx

    policy = broker_dir / "policy.toml"
    good_text = policy.read_text()
    err_path, out_path = broker_dir / "stderr.txt", broker_dir / "stdout.txt"
    cmd = [sys.executable, "-m", "teeserve", "broker", "--policy", str(policy), "--listen", "127.0.0.1:0",
           "--cert", str(pki.cert), "--key", str(pki.key), "--audit", str(broker_dir / "audit.db"),
           "--metrics-listen", "127.0.0.1:0", "--reload-interval", "600", "--log-level", "DEBUG"]  # fmt: skip
    with open(err_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=broker_dir)
    try:
        port = int(_line(err_path, r"key broker listening on 127\.0\.0\.1:(\d+)").group(1))
        mport = int(_line(err_path, r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        addr = f"127.0.0.1:{port}"
        assert obtain(addr, pki.ca, sim_keys.key, ("default", "hex-key")) == {
            "default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0"}
        # SIGHUP with a bad file: rejected, old policy in force
        policy.write_text(good_text.replace("version = 1", "version = 1\nbogus = true"))
        proc.send_signal(signal.SIGHUP)
        _line(err_path, r"policy reload \(SIGHUP\) REJECTED.*bogus")
        assert obtain(addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}
        # SIGHUP with a good file that revokes this enclave
        policy.write_text(good_text.replace(MR_ENCLAVE.hex(), "77" * 32, 1))
        proc.send_signal(signal.SIGHUP)
        _line(err_path, r"policy reloaded \(SIGHUP\).*generation 2")
        with pytest.raises(KeyReleaseDenied):
            obtain(addr, pki.ca, sim_keys.key)
        metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert "teeserve_broker_policy_generation 2.0" in metrics
        assert 'teeserve_broker_policy_reloads_total{result="rejected"} 1.0' in metrics
        assert 'teeserve_broker_attempts_total{decision="denied",reason="policy",tee="sim"} 1.0' in metrics
        assert "teeserve_broker_verification_seconds_bucket" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_bytes() + out_path.read_bytes()
    assert b"SIMULATED" in log
    assert_no_secret(log, "the broker process's output")
    assert_no_secret(metrics.encode(), "the metrics endpoint")
    for f in broker_dir.glob("audit.db*"):
        assert_no_secret(f.read_bytes(), f.name)
    audit = subprocess.run([sys.executable, "-m", "teeserve", "broker", "audit", "--audit",
                            str(broker_dir / "audit.db"), "--verify"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    assert "audit chain OK: 4 rows" in audit.stdout and audit.stdout.count("(SIMULATED)") >= 4
