"""The simulated TEE: key files, quotes that parse as SGX v3, tampering, trust, measurement, marking."""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

import pytest

from teeserve._io import OutputExists
from teeserve.attest import (
    QuoteSignatureInvalid,
    QuoteVerificationFailed,
    SimulationKeyInvalid,
    SimulationNotAllowed,
    TeeKind,
    UntrustedSimulationKey,
    describe_quote,
    format_quote,
    parse_quote,
    sim,
    verify_evidence,
)

from _attest_helpers import entry, quote_of


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    key_path, pub_path = sim.init_key(tmp_path_factory.mktemp("sim"))
    return sim.load_signing_key(key_path), sim.load_public_key(pub_path)


def test_init_key_files(tmp_path: Path) -> None:
    key_path, pub_path = sim.init_key(tmp_path)
    assert (key_path.name, pub_path.name) == ("sim_attest_key.pem", "sim_attest_key.pub.pem")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    key, pub = sim.load_signing_key(key_path), sim.load_public_key(pub_path)
    assert sim.key_id(key) == sim.key_id(pub)
    before = key_path.read_bytes()
    with pytest.raises(OutputExists):
        sim.init_key(tmp_path)
    assert key_path.read_bytes() == before
    sim.init_key(tmp_path, force=True)
    assert key_path.read_bytes() != before


def test_bad_key_files(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("garbage")
    for loader in (sim.load_signing_key, sim.load_public_key):
        with pytest.raises(SimulationKeyInvalid, match="k.pem"):
            loader(tmp_path / "k.pem")
        with pytest.raises(SimulationKeyInvalid, match="cannot read"):
            loader(tmp_path / "missing.pem")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pem").write_bytes(p384.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    with pytest.raises(SimulationKeyInvalid, match="P-256"):
        sim.load_signing_key(tmp_path / "p384.pem")


def test_round_trip_parses_as_sgx_v3(keys) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    mr = bytes(range(32))
    raw = sim.make_quote(key, b"binding", mr_enclave=mr, isv_prod_id=7, isv_svn=3)
    q = parse_quote(raw)
    assert q.version == 3 and q.tee == "sgx" and q.simulated
    assert q.header.att_key_type == 2 and q.header.qe_vendor_id == b"SIMULATED-TEE-v1"
    body = q.body
    assert body.mr_enclave == mr and body.mr_signer == sim.key_id(pub)
    assert (body.isv_prod_id, body.isv_svn) == (7, 3)
    assert body.flag_names == ("INIT", "MODE64BIT") and not body.debug
    assert body.report_data == b"binding".ljust(64, b"\0")
    assert q.signed_length == 432 and q.trailing_bytes == 0 and q.fmspc is None
    assert q.signature_data.attestation_key == raw[500:564]
    v = sim.verify_quote(raw, [pub], now=123)
    assert v.simulated and v.tee is TeeKind.SIM and v.tcb_status == "UpToDate" and v.verified_at == 123
    assert v.collateral_expiry is None and v.sim_key_id == sim.key_id(pub) and v.advisory_ids == ()
    assert v.report_data == b"binding".ljust(64, b"\0")
    assert sim.is_simulated(raw)


def test_debug_quote(keys) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    raw = sim.make_quote(key, b"", mr_enclave=bytes(32), debug=True)
    assert parse_quote(raw).body.flag_names == ("INIT", "DEBUG", "MODE64BIT")
    with pytest.raises(QuoteVerificationFailed, match="Debug"):
        sim.verify_quote(raw, [pub])


def test_every_byte_is_protected(keys) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    raw = sim.make_quote(key, b"r" * 64, mr_enclave=b"\x55" * 32, isv_svn=1)
    sim.verify_quote(raw, [pub])
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            sim.verify_quote(bytes(bad), [pub])
        except Exception as exc:  # noqa: BLE001 - the point: it is ours and it is a rejection
            from teeserve.attest import AttestError

            assert isinstance(exc, AttestError), (i, exc)
        else:
            pytest.fail(f"flipping byte {i} was not detected")
    with pytest.raises(QuoteVerificationFailed):
        sim.verify_quote(raw + b"\0", [pub])


def test_signature_tamper_is_signature_invalid(keys) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    raw = bytearray(sim.make_quote(key, b"", mr_enclave=bytes(32)))
    raw[368] ^= 1  # report data
    with pytest.raises(QuoteSignatureInvalid):
        sim.verify_quote(bytes(raw), [pub])


def test_untrusted_key(keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    other_key = sim.load_signing_key(sim.init_key(tmp_path)[0])
    raw = sim.make_quote(other_key, b"", mr_enclave=bytes(32))
    with pytest.raises(UntrustedSimulationKey, match="untrusted"):
        sim.verify_quote(raw, [pub])
    with pytest.raises(UntrustedSimulationKey):
        sim.verify_quote(raw, [])
    assert sim.verify_quote(raw, [pub, other_key.public_key()]).sim_key_id == sim.key_id(other_key)


def test_real_quote_is_not_simulated(keys) -> None:  # type: ignore[no-untyped-def]
    raw = quote_of(entry("automata-sgx-v3-platform"))
    assert not sim.is_simulated(raw) and not parse_quote(raw).simulated
    with pytest.raises(QuoteVerificationFailed, match="not a SIMULATED quote"):
        sim.verify_quote(raw, [keys[1]])
    assert not sim.is_simulated(b"") and not sim.is_simulated(b"\x03\x00" + bytes(40))


def test_make_quote_argument_checks(keys) -> None:  # type: ignore[no-untyped-def]
    key, _ = keys
    with pytest.raises(ValueError, match="report_data"):
        sim.make_quote(key, bytes(65), mr_enclave=bytes(32))
    with pytest.raises(ValueError, match="mr_enclave"):
        sim.make_quote(key, b"", mr_enclave=bytes(31))
    with pytest.raises(ValueError, match="16-bit"):
        sim.make_quote(key, b"", mr_enclave=bytes(32), isv_svn=70000)


def test_verify_evidence_routes_simulated_quotes(keys) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    raw = sim.make_quote(key, b"", mr_enclave=bytes(32))
    with pytest.raises(SimulationNotAllowed, match="SIMULATED"):
        verify_evidence(raw, collateral=None, now=1)
    v = verify_evidence(raw, collateral=None, sim_keys=[pub], now=1)
    assert v.simulated and v.verified_at == 1


def test_everything_printed_about_a_simulated_quote_says_so(keys, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    key, pub = keys
    raw = sim.make_quote(key, b"", mr_enclave=bytes(32))
    with caplog.at_level(logging.INFO, logger="teeserve.attest"):
        v = sim.verify_quote(raw, [pub])
    assert caplog.records and all("SIMULATED" in r.getMessage() for r in caplog.records)
    for text in (str(v), repr(v), v.summary(), repr(v.quote), format_quote(v.quote), str(v.tee)):
        assert "SIMULATED" in text, text
    assert describe_quote(v.quote)["simulated"] is True


# ------------------------------------------------------------------------------------ measurement


def test_measurement_of_the_installed_package_is_stable() -> None:
    m = sim.code_measurement()
    assert len(m) == 32 and m == sim.code_measurement()
    assert sim.code_measurement(b"port = 8500") != m


def test_measurement_changes_with_code_and_config(tmp_path: Path) -> None:
    import teeserve

    root = tmp_path / "teeserve"
    shutil.copytree(Path(teeserve.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    base = sim.code_measurement(b"cfg", root=root)
    assert base == sim.code_measurement(b"cfg", root=root)
    assert sim.code_measurement(b"cfg2", root=root) != base

    target = root / "attest" / "_policy.py"
    original = target.read_bytes()
    target.write_bytes(original + b"\n# changed\n")
    assert sim.code_measurement(b"cfg", root=root) != base
    target.write_bytes(original)
    assert sim.code_measurement(b"cfg", root=root) == base

    (root / "attest" / "new_module.py").write_text("x = 1\n")
    assert sim.code_measurement(b"cfg", root=root) != base
    (root / "attest" / "new_module.py").rename(root / "attest" / "renamed.py")  # same bytes, other path
    renamed = sim.code_measurement(b"cfg", root=root)
    assert renamed != base
    (root / "attest" / "renamed.py").unlink()

    typed = (root / "py.typed").read_bytes()
    (root / "py.typed").write_bytes(typed + b"partial\n")  # package data counts too
    assert sim.code_measurement(b"cfg", root=root) != base
    (root / "py.typed").write_bytes(typed)

    # not measured: caches, hidden files, other file types
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (root / ".hidden.py").write_text("junk")
    (root / "notes.txt").write_text("junk")
    assert sim.code_measurement(b"cfg", root=root) == base
