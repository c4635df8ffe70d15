"""``teeserve attest show|verify`` and ``teeserve sim init|measure|quote``, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teeserve.attest import parse_quote, sim
from teeserve.cli import main

from _attest_helpers import VECTORS, collateral_path, entry, quote_of, running_pccs

SGX = entry("automata-sgx-v3-platform")  # SWHardeningNeeded
TDX = entry("phala-tdx-v4")  # UpToDate
MRE = parse_quote(quote_of(SGX)).body.mr_enclave.hex()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def simdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, out, _ = run(capsys, "sim", "init", "-o", str(tmp_path / "sim"))
    assert code == 0 and "0600" in out
    return tmp_path / "sim"


def _policy(tmp_path: Path, body: str) -> Path:
    (tmp_path / "wrap-key").write_bytes(bytes(16))
    p = tmp_path / "policy.toml"
    p.write_text("version = 1\n" + body)
    return p


# ------------------------------------------------------------------------------------------- sim


def test_sim_init_refuses_to_overwrite(simdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "sim", "init", "-o", str(simdir))
    assert code == 1 and "already exists" in err and "Traceback" not in err
    assert run(capsys, "sim", "init", "-o", str(simdir), "--force")[0] == 0


def test_sim_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sim", "measure")
    assert code == 0 and out.strip() == sim.code_measurement().hex()
    cfg = tmp_path / "serve.toml"
    cfg.write_bytes(b"port = 8500\n")
    code, out, _ = run(capsys, "sim", "measure", "--config", str(cfg))
    assert out.strip() == sim.code_measurement(b"port = 8500\n").hex() != sim.code_measurement().hex()
    code, _, err = run(capsys, "sim", "measure", "--config", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err


def _sim_quote(capsys, simdir: Path, out: Path, *extra: str) -> Path:  # type: ignore[no-untyped-def]
    code, text, err = run(capsys, "sim", "quote", "--key", str(simdir / "sim_attest_key.pem"), "-o", str(out), *extra)
    assert code == 0, err
    assert "SIMULATED" in text
    return out


def test_sim_quote_show_and_verify(simdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = _sim_quote(capsys, simdir, tmp_path / "q.bin", "--report-data", "ab" * 64, "--isv-svn", "4")
    code, out, _ = run(capsys, "attest", "show", str(q))
    assert code == 0 and "SIMULATED" in out and "INIT, MODE64BIT" in out and sim.code_measurement().hex() in out
    pub = str(simdir / "sim_attest_key.pub.pem")
    code, out, err = run(capsys, "attest", "verify", str(q), "--sim-key", pub, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["accepted"] and doc["simulated"] and doc["tcb_status"] == "UpToDate (SIMULATED)"
    assert doc["quote"]["report"]["isv_svn"] == 4
    code, out, _ = run(capsys, "attest", "verify", str(q))
    assert code == 1 and "NOT TRUSTED" in out and "no simulation key" in out
    hexq = _sim_quote(capsys, simdir, tmp_path / "q.hex", "--hex", "--mr-enclave", "11" * 32)
    code, out, _ = run(capsys, "attest", "verify", str(hexq), "--sim-key", pub, "--report-data", "ff")
    assert code == 3 and "FAILED report_data" in out and "DENIED SIMULATED" in out


def test_sim_quote_policy(simdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = _sim_quote(capsys, simdir, tmp_path / "q.bin", "--isv-prod-id", "5", "--isv-svn", "2")
    pub = simdir / "sim_attest_key.pub.pem"
    p = _policy(tmp_path, f'[simulation]\ntrusted_keys = ["{pub}"]\n[secrets.k]\nfile = "wrap-key"\ntee = ["sim"]\n'
                          f'allow_simulation = true\n[[secrets.k.sim]]\nmr_enclave = "{sim.code_measurement().hex()}"\n'
                          f"isv_prod_id = 5\nmin_isv_svn = 3\n")  # fmt: skip
    code, out, _ = run(capsys, "attest", "verify", str(q), "--policy", str(p), "--secret", "k")
    assert code == 3 and "FAILED sim.isv_svn: expected >= 3, got 2" in out
    q2 = _sim_quote(capsys, simdir, tmp_path / "q2.bin", "--isv-prod-id", "5", "--isv-svn", "3")
    code, out, _ = run(capsys, "attest", "verify", str(q2), "--policy", str(p), "--secret", "k")
    assert code == 0 and "ACCEPTED SIMULATED" in out


# ------------------------------------------------------------------------------------------ show


def test_show_real_sgx_quote(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "attest", "show", str(VECTORS / SGX["quote_file"]))
    assert code == 0
    for needle in ("SGX (quote v3)", f"MRENCLAVE:", MRE, "MRSIGNER:", "ISV_PROD_ID:", "INIT, MODE64BIT",
                   "00606A000000 (platform CA)", "PCK certificate chain"):  # fmt: skip
        assert needle in out, needle
    assert "SIMULATED" not in out


def test_show_tdx_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "attest", "show", str(VECTORS / "phala-dcap-qvl/near_quote_hex.txt"))
    assert code == 0 and "TDX (quote v4, TD 1.0 report)" in out and "RTMR3:" in out and "SEPT_VE_DISABLE" in out
    code, out, _ = run(capsys, "attest", "show", "--json", str(VECTORS / "automata-dcap-attestation/quotes_alibaba_quote_5.dat"))
    doc = json.loads(out)
    assert doc["version"] == 5 and doc["report"]["type"] == "TD15" and doc["report"]["mr_service_td"].strip("0")


def test_show_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x03\x00\x02\x00" + bytes(100))
    code, _, err = run(capsys, "attest", "show", str(bad))
    assert code == 1 and "malformed quote" in err and "offset" in err and "Traceback" not in err
    code, _, err = run(capsys, "attest", "show", str(tmp_path / "missing"))
    assert code == 2 and "cannot read" in err
    (tmp_path / "empty").write_bytes(b"")
    assert run(capsys, "attest", "show", str(tmp_path / "empty"))[0] == 2


# ---------------------------------------------------------------------------------------- verify


def _verify(capsys, e: dict, *extra: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    return run(capsys, "attest", "verify", str(VECTORS / e["quote_file"]), "--collateral", str(collateral_path(e)),
               "--now", str(e["now_secs"]), *extra)  # fmt: skip


def test_verify_without_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _verify(capsys, SGX)
    assert code == 3 and "TCB status:  SWHardeningNeeded" in out and "INTEL-SA-00615" in out
    assert "identity not checked" in out and "FAILED tcb_status" in out
    code, out, _ = _verify(capsys, TDX)
    assert code == 0 and "ACCEPTED" in out and "UpToDate" in out


def test_verify_with_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _policy(tmp_path, f'[secrets.k]\nfile = "wrap-key"\ntee = ["sgx"]\ntcb_statuses = ["SWHardeningNeeded"]\n'
                          f'[[secrets.k.sgx]]\nmr_enclave = "{MRE}"\n'
                          f'[secrets.strict]\nfile = "wrap-key"\ntee = ["sgx"]\nreject_advisories = ["INTEL-SA-00615"]\n'
                          f'[[secrets.strict.sgx]]\nmr_signer = "{"00" * 32}"\nisv_prod_id = 1\nmin_isv_svn = 1\n')  # fmt: skip
    code, out, _ = _verify(capsys, SGX, "--policy", str(p), "--secret", "k")
    assert code == 0 and "verdict:     ACCEPTED" in out
    code, out, _ = _verify(capsys, SGX, "--policy", str(p), "--secret", "strict", "--json")
    doc = json.loads(out)
    assert code == 3 and not doc["accepted"]
    rules = [v["rule"] for v in doc["policy"]["violations"]]
    assert rules == ["tcb_status", "advisories", "sgx.mr_signer", "sgx.isv_prod_id", "sgx.isv_svn"]
    code, _, err = _verify(capsys, SGX, "--policy", str(p), "--secret", "nope")
    assert code == 4 and "nope" in err


def test_verify_rejections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    e = entry("sgx-collateral-expired")
    code, out, _ = _verify(capsys, e)
    assert code == 1 and "TCBInfo expired" in out and "NOT TRUSTED" in out
    code, out, _ = _verify(capsys, e, "--json")
    assert code == 1 and json.loads(out)["error_type"] == "QuoteVerificationFailed"
    bad = _policy(tmp_path, '[secrets.k]\nfile = "wrap-key"\ntee = ["sgx"]\nallow_debug = true\n')
    code, _, err = _verify(capsys, SGX, "--policy", str(bad), "--secret", "k")
    assert code == 2 and str(bad) in err and "allow_debug" in err
    code, _, err = _verify(capsys, SGX, "--policy", str(bad))
    assert code == 2 and "go together" in err
    code, out, _ = run(capsys, "attest", "verify", str(VECTORS / SGX["quote_file"]), "--now", "1")
    assert code == 1 and "no collateral source" in out


def test_verify_ra_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ra = tmp_path / "ra_config.json"
    body = parse_quote(quote_of(SGX)).body
    doc = {"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on",
           "mrs": [{"mr_enclave": MRE, "mr_signer": body.mr_signer.hex(), "isv_prod_id": "0", "isv_svn": "0"}]}  # fmt: skip
    ra.write_text(json.dumps(doc))
    code, out, _ = _verify(capsys, SGX, "--policy", str(ra), "--secret", "default")
    assert code == 3 and "FAILED tcb_status" in out and "sgx.mr_enclave" not in out
    ra.write_text(json.dumps({**doc, "verify_mr_enclave": "o"}))
    code, _, err = _verify(capsys, SGX, "--policy", str(ra), "--secret", "default")
    assert code == 2 and "verify_mr_enclave" in err


class _SimProvider:
    def __init__(self, key) -> None:  # type: ignore[no-untyped-def]
        self.key = key

    def get_quote(self, report_data: bytes) -> bytes:
        return sim.make_quote(self.key, report_data, mr_enclave=b"\x77" * 32)


def test_ratls_certificate_input(simdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratls = pytest.importorskip("teeserve.attest.ratls")
    creds = ratls.make_certificate(_SimProvider(sim.load_signing_key(simdir / "sim_attest_key.pem")))
    pem, der = tmp_path / "cert.pem", tmp_path / "cert.der"
    pem.write_bytes(creds.cert_pem)
    der.write_bytes(creds.cert_der)
    pub = str(simdir / "sim_attest_key.pub.pem")
    for path in (pem, der):
        code, out, _ = run(capsys, "attest", "show", str(path))
        assert code == 0 and "SIMULATED" in out and "77" * 32 in out
        code, out, _ = run(capsys, "attest", "verify", str(path), "--sim-key", pub)
        assert code == 0 and "ACCEPTED SIMULATED" in out


def test_verify_through_a_pccs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_pccs(tmp_path, [collateral_path(SGX)]) as pccs:
        q = str(VECTORS / SGX["quote_file"])
        now = str(SGX["now_secs"])
        cache = tmp_path / "cache"
        code, out, _ = run(capsys, "attest", "verify", q, "--pccs-url", pccs.url, "--pccs-ca", str(pccs.ca_file),
                           "--cache-dir", str(cache), "--now", now, "--json")  # fmt: skip
        doc = json.loads(out)
        assert code == 3 and doc["verified"] and doc["tcb_status"] == "SWHardeningNeeded"
        assert (cache / "sgx-00606A000000-platform.json").exists()
        code, out, _ = run(capsys, "attest", "verify", q, "--pccs-url", pccs.url, "--cache-dir",
                           str(tmp_path / "cache2"), "--now", now)  # fmt: skip
        assert code == 1 and "verify failed" in out.lower()
        code, _, err = run(capsys, "attest", "verify", q, "--pccs-ca", str(pccs.ca_file))
        assert code == 2 and "--pccs-ca needs --pccs-url" in err
