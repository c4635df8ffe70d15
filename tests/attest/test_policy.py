"""Key-release policy: the TOML format, ra_config.json, and the negative catalogue P4–P7, P13, P20."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from teeserve.attest import (
    Collateral,
    PolicyInvalid,
    PolicyViolation,
    TeeKind,
    UnknownSecret,
    VerifiedQuote,
    encode_secret,
    load_policy,
    parse_quote,
    read_secret,
    sim,
    verify_dcap,
)

from _attest_helpers import collateral_path, entry, quote_of

E_SGX = entry("automata-sgx-v3-platform")
E_OOD = entry("dcaprs-sgx-v3-platform")
E_TDX = entry("phala-tdx-v4")


def _verify(e: dict) -> VerifiedQuote:
    return verify_dcap(quote_of(e), Collateral.from_file(collateral_path(e)), now=e["now_secs"])


SGX = _verify(E_SGX)  # real quote: SWHardeningNeeded [INTEL-SA-00615]
OOD = _verify(E_OOD)  # real quote: OutOfDate, different MRSIGNER
TDX = _verify(E_TDX)  # real TD: UpToDate
NOW = E_SGX["now_secs"]
MRE = SGX.quote.body.mr_enclave.hex()
MRS = SGX.quote.body.mr_signer.hex()
MRTD = TDX.quote.body.mr_td.hex()  # type: ignore[union-attr]


def write_policy(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    (tmp_path / "wrap-key").write_bytes(bytes(range(16)))
    p = tmp_path / name
    p.write_text(text)
    return p


def sgx_policy(tmp_path: Path, rules: str = "", entries: str | None = None) -> Path:
    entries = entries if entries is not None else f'[[secrets.model-key.sgx]]\nmr_enclave = "{MRE}"\n'
    return write_policy(
        tmp_path,
        f'version = 1\n[secrets.model-key]\nfile = "wrap-key"\ntee = ["sgx"]\n'
        f'tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n{rules}\n{entries}',
    )


def rules_of(verdict) -> list[str]:  # type: ignore[no-untyped-def]
    return [v.rule for v in verdict.violations]


# ------------------------------------------------------------------------------------------ accept


def test_real_sgx_quote_accepted_by_mrenclave(tmp_path: Path) -> None:
    policy = load_policy(sgx_policy(tmp_path))
    verdict = policy.evaluate(SGX, "model-key", now=NOW)
    assert verdict.accepted and verdict.violations == ()
    verdict.raise_for_violations()
    assert "accepted" in str(verdict)


def test_real_sgx_quote_accepted_by_mrsigner_entry(tmp_path: Path) -> None:
    entries = f'[[secrets.model-key.sgx]]\nmr_signer = "{MRS}"\nisv_prod_id = 0\nmin_isv_svn = 0\n'
    assert load_policy(sgx_policy(tmp_path, entries=entries)).evaluate(SGX, "model-key", now=NOW).accepted


def test_any_matching_entry_admits(tmp_path: Path) -> None:
    entries = (
        f'[[secrets.model-key.sgx]]\nmr_enclave = "{"00" * 32}"\n'
        f'[[secrets.model-key.sgx]]\nmr_enclave = ["{"11" * 32}", "{MRE}"]\n'
    )
    assert load_policy(sgx_policy(tmp_path, entries=entries)).evaluate(SGX, "model-key", now=NOW).accepted


def test_real_td_accepted_by_mrtd_and_rtmrs(tmp_path: Path) -> None:
    td = TDX.quote.body
    p = write_policy(
        tmp_path,
        f'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["tdx"]\n[[secrets.k.tdx]]\nmr_td = "{MRTD}"\n'
        f'rtmr0 = "{td.rtmr0.hex()}"\nrtmr3 = ["{"00" * 48}", "{"ff" * 48}"]\n',  # type: ignore[union-attr]
    )
    verdict = load_policy(p).evaluate(TDX, "k", now=E_TDX["now_secs"])
    assert verdict.accepted, verdict


# ----------------------------------------------------------------------------------- P4 identity


def test_p4_wrong_mrenclave(tmp_path: Path) -> None:
    entries = f'[[secrets.model-key.sgx]]\nmr_enclave = "{"ab" * 32}"\n'
    verdict = load_policy(sgx_policy(tmp_path, entries=entries)).evaluate(SGX, "model-key", now=NOW)
    assert rules_of(verdict) == ["sgx.mr_enclave"]
    v = verdict.violations[0]
    assert (v.expected, v.actual) == ("ab" * 32, MRE)
    with pytest.raises(PolicyViolation) as info:
        verdict.raise_for_violations()
    assert info.value.rule == "sgx.mr_enclave" and info.value.exit_code == 3


@pytest.mark.parametrize(
    ("signer", "prod", "min_svn", "failed"),
    [
        ("cd" * 32, 0, 0, ["sgx.mr_signer"]),
        (None, 7, 0, ["sgx.isv_prod_id"]),
        (None, 0, 1, ["sgx.isv_svn"]),
        ("cd" * 32, 7, 3, ["sgx.mr_signer", "sgx.isv_prod_id", "sgx.isv_svn"]),
    ],
)
def test_p4_mrsigner_prodid_svn(tmp_path: Path, signer: str | None, prod: int, min_svn: int, failed: list) -> None:
    entries = f'[[secrets.model-key.sgx]]\nmr_signer = "{signer or MRS}"\nisv_prod_id = {prod}\nmin_isv_svn = {min_svn}\n'
    verdict = load_policy(sgx_policy(tmp_path, entries=entries)).evaluate(SGX, "model-key", now=NOW)
    assert rules_of(verdict) == failed
    if "sgx.isv_svn" in failed:
        v = [x for x in verdict.violations if x.rule == "sgx.isv_svn"][0]
        assert (v.expected, v.actual) == (f">= {min_svn}", 0)


def _sim_verified(key, *, isv_svn: int = 0, debug: bool = False, mr_enclave: bytes = b"\x42" * 32):  # type: ignore[no-untyped-def]
    raw = sim.make_quote(key, b"rd", mr_enclave=mr_enclave, isv_prod_id=9, isv_svn=isv_svn, debug=debug)
    if debug:  # verify_quote refuses debug quotes; build the verified record the way it would
        q = parse_quote(raw)
        return VerifiedQuote(TeeKind.SIM, True, "UpToDate", (), q, None, NOW, sim.key_id(key))
    return sim.verify_quote(raw, [key.public_key()], now=NOW)


@pytest.fixture(scope="module")
def sim_keys(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("simkeys")
    key_path, pub_path = sim.init_key(d)
    other = tmp_path_factory.mktemp("other")
    other_key, other_pub = sim.init_key(other)
    return sim.load_signing_key(key_path), pub_path, sim.load_signing_key(other_key)


def sim_policy(tmp_path: Path, pub: Path, *, allow: bool = True, min_svn: int = 3, tee: str = '"sim"') -> Path:
    kid = sim.key_id(sim.load_public_key(pub)).hex()
    return write_policy(
        tmp_path,
        f'version = 1\n[simulation]\ntrusted_keys = ["{pub}"]\n'
        f'[secrets.k]\nfile = "wrap-key"\ntee = [{tee}]\nallow_simulation = {"true" if allow else "false"}\n'
        f'[[secrets.k.sim]]\nmr_signer = "{kid}"\nisv_prod_id = 9\nmin_isv_svn = {min_svn}\n',
    )


@pytest.mark.parametrize(("svn", "ok"), [(2, False), (3, True), (4, True), (300, True)])
def test_p4_isv_svn_is_a_minimum_not_equality(tmp_path: Path, sim_keys, svn: int, ok: bool) -> None:  # type: ignore[no-untyped-def]
    key, pub, _ = sim_keys
    verdict = load_policy(sim_policy(tmp_path, pub)).evaluate(_sim_verified(key, isv_svn=svn), "k", now=NOW)
    assert verdict.accepted is ok, verdict
    assert verdict.simulated and "SIMULATED" in str(verdict)


def test_p4_wrong_tdx_measurements(tmp_path: Path) -> None:
    p = write_policy(
        tmp_path,
        f'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["tdx"]\n[[secrets.k.tdx]]\nmr_td = "{"00" * 48}"\n'
        f'rtmr1 = "{"00" * 48}"\nmr_owner = "{"11" * 48}"\n',
    )
    verdict = load_policy(p).evaluate(TDX, "k", now=E_TDX["now_secs"])
    assert rules_of(verdict) == ["tdx.mr_td", "tdx.rtmr1", "tdx.mr_owner"]


def test_p4_report_data_binding(tmp_path: Path) -> None:
    policy = load_policy(sgx_policy(tmp_path))
    assert policy.evaluate(SGX, "model-key", now=NOW, report_data=bytes(64)).accepted
    assert rules_of(policy.evaluate(SGX, "model-key", now=NOW, report_data=b"nonce")) == ["report_data"]


def test_wrong_tee_kind(tmp_path: Path) -> None:
    verdict = load_policy(sgx_policy(tmp_path)).evaluate(TDX, "model-key", now=E_TDX["now_secs"])
    assert rules_of(verdict)[0] == "tee" and "tdx.identity" in rules_of(verdict)


# -------------------------------------------------------------------------------------- P5 debug


def test_p5_debug_sgx_always_rejected(tmp_path: Path, sim_keys) -> None:  # type: ignore[no-untyped-def]
    key, pub, _ = sim_keys
    verdict = load_policy(sim_policy(tmp_path, pub)).evaluate(_sim_verified(key, isv_svn=5, debug=True), "k", now=NOW)
    assert rules_of(verdict) == ["debug"]


def test_p5_debug_td_always_rejected(tmp_path: Path) -> None:
    body = dataclasses.replace(TDX.quote.body, td_attributes=TDX.quote.body.td_attributes | 1)  # type: ignore[type-var]
    debug_td = dataclasses.replace(TDX, quote=dataclasses.replace(TDX.quote, body=body))
    p = write_policy(tmp_path, f'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["tdx"]\n'
                               f'[[secrets.k.tdx]]\nmr_td = "{MRTD}"\n')  # fmt: skip
    assert rules_of(load_policy(p).evaluate(debug_td, "k", now=E_TDX["now_secs"])) == ["debug"]


def test_sgx_attribute_rules(tmp_path: Path) -> None:
    body = dataclasses.replace(SGX.quote.body, flags=SGX.quote.body.flags | 0x10)  # type: ignore[type-var]
    prov = dataclasses.replace(SGX, quote=dataclasses.replace(SGX.quote, body=body))
    assert rules_of(load_policy(sgx_policy(tmp_path)).evaluate(prov, "model-key", now=NOW)) == ["sgx.attributes"]


def test_no_debug_switch_exists(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match="always rejected"):
        load_policy(sgx_policy(tmp_path, rules="allow_debug = true"))


# --------------------------------------------------------------------------------- P6 TCB status


def test_p6_default_is_uptodate_only(tmp_path: Path) -> None:
    p = write_policy(tmp_path, f'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["sgx"]\n'
                               f'[[secrets.k.sgx]]\nmr_enclave = "{MRE}"\n')  # fmt: skip
    verdict = load_policy(p).evaluate(SGX, "k", now=NOW)
    assert rules_of(verdict) == ["tcb_status"]
    assert verdict.violations[0].actual == "SWHardeningNeeded"


def test_p6_out_of_date_rejected(tmp_path: Path) -> None:
    entries = f'[[secrets.model-key.sgx]]\nmr_enclave = "{OOD.quote.body.mr_enclave.hex()}"\n'
    verdict = load_policy(sgx_policy(tmp_path, entries=entries)).evaluate(OOD, "model-key", now=E_OOD["now_secs"])
    assert rules_of(verdict) == ["tcb_status"]


def test_p6_rejected_advisory(tmp_path: Path) -> None:
    verdict = load_policy(sgx_policy(tmp_path, rules='reject_advisories = ["INTEL-SA-00615", "INTEL-SA-00334"]'))
    v = verdict.evaluate(SGX, "model-key", now=NOW)
    assert rules_of(v) == ["advisories"] and v.violations[0].actual == ["INTEL-SA-00615"]


# ------------------------------------------------------------------------------ P7 collateral age


def test_p7_expired_collateral(tmp_path: Path) -> None:
    policy = load_policy(sgx_policy(tmp_path))
    assert SGX.collateral_expiry is not None
    assert policy.evaluate(SGX, "model-key", now=SGX.collateral_expiry - 1).accepted
    verdict = policy.evaluate(SGX, "model-key", now=SGX.collateral_expiry)
    assert rules_of(verdict) == ["collateral"]
    no_coll = dataclasses.replace(SGX, collateral_expiry=None)
    assert rules_of(policy.evaluate(no_coll, "model-key", now=NOW)) == ["collateral"]


# ----------------------------------------------------------------------------- P13 per resource


def test_p13_unknown_secret_and_per_secret_rules(tmp_path: Path) -> None:
    p = sgx_policy(tmp_path, entries=(
        f'[[secrets.model-key.sgx]]\nmr_enclave = "{MRE}"\n'
        f'[secrets.other]\nfile = "wrap-key"\ntee = ["sgx"]\n[[secrets.other.sgx]]\nmr_enclave = "{"00" * 32}"\n'
    ))  # fmt: skip
    policy = load_policy(p)
    assert policy.evaluate(SGX, "model-key", now=NOW).accepted
    assert not policy.evaluate(SGX, "other", now=NOW).accepted
    with pytest.raises(UnknownSecret) as info:
        policy.evaluate(SGX, "nope", now=NOW)
    assert info.value.exit_code == 4 and "nope" in str(info.value)


# -------------------------------------------------------------------------------- simulation rules


def test_simulated_quote_needs_allow_simulation(tmp_path: Path, sim_keys) -> None:  # type: ignore[no-untyped-def]
    key, pub, _ = sim_keys
    verified = _sim_verified(key, isv_svn=5)
    # a real-SGX policy: simulated quotes are a different TEE kind and not allowed
    verdict = load_policy(sgx_policy(tmp_path)).evaluate(verified, "model-key", now=NOW)
    assert {"tee", "simulation", "simulation.key"} <= set(rules_of(verdict))
    # allow_simulation = false with tee = ["sim"] is refused when loading (it must be meant)
    with pytest.raises(PolicyInvalid, match="allow_simulation"):
        load_policy(sim_policy(tmp_path, pub, allow=False))


def test_simulated_quote_from_another_key(tmp_path: Path, sim_keys) -> None:  # type: ignore[no-untyped-def]
    key, pub, other = sim_keys
    verified = sim.verify_quote(
        sim.make_quote(other, b"", mr_enclave=b"\x42" * 32, isv_prod_id=9, isv_svn=5), [other.public_key()]
    )
    verdict = load_policy(sim_policy(tmp_path, pub)).evaluate(verified, "k", now=NOW)
    assert "simulation.key" in rules_of(verdict) and "sim.mr_signer" in rules_of(verdict)


def test_allow_simulation_needs_trusted_keys(tmp_path: Path) -> None:
    p = write_policy(tmp_path, 'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["sim"]\nallow_simulation = true\n'
                               f'[[secrets.k.sim]]\nmr_enclave = "{"00" * 32}"\n')  # fmt: skip
    with pytest.raises(PolicyInvalid, match="simulation.trusted_keys"):
        load_policy(p)


def test_all_failed_rules_are_reported(tmp_path: Path, sim_keys) -> None:  # type: ignore[no-untyped-def]
    key, _, _ = sim_keys
    verified = _sim_verified(key, debug=True)
    p = sgx_policy(tmp_path, rules='reject_advisories = ["INTEL-SA-00615"]',
                   entries=f'[[secrets.model-key.sgx]]\nmr_enclave = "{"00" * 32}"\n')  # fmt: skip
    verdict = load_policy(p).evaluate(verified, "model-key", now=NOW, report_data=b"x")
    assert rules_of(verdict) == ["tee", "simulation", "simulation.key", "debug", "sim.identity", "report_data"]
    assert "denied (SIMULATED quote)" in str(verdict)


# ------------------------------------------------------------------ P20 malformed policies (TOML)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("", "", "empty"),
        ("   \n", "", "empty"),
        ("version = 1\nsecrets = [", "", "not valid TOML"),
        ("version = 1\n", "secrets", "missing"),
        ('[secrets.k]\nfile = "f"\n', "version", "missing"),
        ("version = 2\n[secrets.k]\n", "version", "must be 1"),
        ("version = 1\nsecrets = {}\n", "secrets", "at least one"),
        ("version = 1\nextra = 1\n[secrets.k]\n", "extra", "unknown key"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\nmr_enclave = "x"\n', "secrets.k.mr_enclave", "unknown key"),
        ('version = 1\n[secrets.k]\ntee = ["sgx"]\n', "secrets.k.file", "missing"),
        ('version = 1\n[secrets.k]\nfile = ""\ntee = ["sgx"]\n', "secrets.k.file", "non-empty"),
        ('version = 1\n[secrets.k]\nfile = "f"\n', "secrets.k.tee", "missing"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = []\n', "secrets.k.tee", "non-empty"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sev"]\n', "secrets.k.tee", "non-empty"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n', "secrets.k.sgx", "never admits"),
        ('version = 1\n[secrets.k]\nfile = "f"\nformat = "b64"\ntee = ["sgx"]\n', "secrets.k.format", "one of"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\ntcb_statuses = ["Revoked"]\n', "secrets.k.tcb_statuses", "Revoked"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\ntcb_statuses = ["UpToDat"]\n', "secrets.k.tcb_statuses", "unknown TCB"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\ntcb_statuses = []\n', "secrets.k.tcb_statuses", "must not be empty"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\nreject_advisories = ["SA-1"]\n', "secrets.k.reject_advisories", "advisory"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\nallow_simulation = "yes"\n', "secrets.k.allow_simulation", "true or false"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_enclav = "00"\n', "secrets.k.sgx[0].mr_enclav", "did you mean 'mr_enclave'"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_enclave = "00"\n', "secrets.k.sgx[0].mr_enclave", "64 hex"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_enclave = ""\n', "secrets.k.sgx[0].mr_enclave", "64 hex"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_enclave = []\n', "secrets.k.sgx[0].mr_enclave", "empty list"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nisv_svn = 1\n', "secrets.k.sgx[0].isv_svn", "unknown key"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nisv_prod_id = 1\n', "secrets.k.sgx[0]", "needs mr_enclave"),
        (f'version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_signer = "{"00" * 32}"\nisv_prod_id = 1\n', "secrets.k.sgx[0].min_isv_svn", "missing"),
        (f'version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_signer = "{"00" * 32}"\nisv_prod_id = 1\nmin_isv_svn = -1\n', "secrets.k.sgx[0].min_isv_svn", "0..65535"),
        (f'version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_enclave = "{"00" * 32}"\n[[secrets.k.tdx]]\nmr_td = "{"00" * 48}"\n', "secrets.k.tee", "does not list 'tdx'"),
        ('version = 1\n[secrets.k]\nfile = "f"\ntee = ["tdx"]\n[[secrets.k.tdx]]\nrtmr0 = "00"\n', "secrets.k.tdx[0].mr_td", "missing"),
        (f'version = 1\n[secrets.k]\nfile = "f"\ntee = ["sgx"]\n[[secrets.k.sgx]]\nmr_signer = "{"00" * 32}"\n'
         'isv_prod_id = "1"\nmin_isv_svn = 1\n', "secrets.k.sgx[0].isv_prod_id", "integer"),
        ('version = 1\n[secrets."bad name"]\n', "secrets.bad name", "letters"),
        ('version = 1\n[simulation]\ntrusted_keys = ["missing.pem"]\n[secrets.k]\n', "simulation.trusted_keys[0]", "cannot read"),
        ('version = 1\n[simulation]\n[secrets.k]\n', "simulation.trusted_keys", "missing"),
    ],
)
def test_p20_malformed_policy_fails_closed(tmp_path: Path, text: str, key: str, problem: str) -> None:
    p = write_policy(tmp_path, text)
    with pytest.raises(PolicyInvalid) as info:
        load_policy(p)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(p) in str(info.value)
    assert info.value.exit_code == 2


def test_p20_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


# ---------------------------------------------------------------------- ra_config.json (reference)


def ra(tmp_path: Path, doc: object, name: str = "ra_config.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    (tmp_path / "wrap_key").write_bytes(bytes(16))
    return p


def ra_doc(**flags: str) -> dict:
    base = {"verify_mr_enclave": "on", "verify_mr_signer": "on", "verify_isv_prod_id": "on", "verify_isv_svn": "on"}
    base.update(flags)
    base["mrs"] = [{"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "0", "isv_svn": "0"}]
    return base


def _allow_sw(policy):  # type: ignore[no-untyped-def]
    sp = policy.secrets["default"]
    return dataclasses.replace(policy, secrets={"default": dataclasses.replace(
        sp, tcb_statuses=frozenset({"UpToDate", "SWHardeningNeeded"}))})  # fmt: skip


def test_ra_config_accepted_as_is(tmp_path: Path) -> None:
    policy = load_policy(ra(tmp_path, ra_doc()))
    sp = policy.secret("default")
    assert sp.file == tmp_path / "wrap_key" and sp.format == "raw" and sp.tee == {"sgx"}
    assert sp.tcb_statuses == {"UpToDate"}
    ident = sp.sgx[0]
    assert ident.mr_enclave == {bytes.fromhex(MRE)} and ident.mr_signer == {bytes.fromhex(MRS)}
    assert (ident.isv_prod_id, ident.min_isv_svn) == (0, 0)
    # UpToDate only by default (the reference's insecure opt-ins are not carried over)
    assert rules_of(policy.evaluate(SGX, "default", now=NOW)) == ["tcb_status"]
    assert _allow_sw(policy).evaluate(SGX, "default", now=NOW).accepted


def test_ra_config_isv_svn_is_a_minimum(tmp_path: Path) -> None:
    doc = ra_doc()
    doc["mrs"][0]["isv_svn"] = "1"
    verdict = _allow_sw(load_policy(ra(tmp_path, doc))).evaluate(SGX, "default", now=NOW)
    assert rules_of(verdict) == ["sgx.isv_svn"] and verdict.violations[0].expected == ">= 1"


def test_ra_config_checks_only_enabled_fields(tmp_path: Path) -> None:
    doc = ra_doc(verify_mr_signer="off", verify_isv_prod_id="off", verify_isv_svn="off")
    doc["mrs"] = [{"mr_enclave": MRE}]
    ident = load_policy(ra(tmp_path, doc)).secret("default").sgx[0]
    assert ident.mr_signer is None and ident.isv_prod_id is None and ident.min_isv_svn is None


@pytest.mark.parametrize("value", ["o", "", "ON", "On", "yes", "1", True, 1, None])
def test_ra_config_on_off_exactly(tmp_path: Path, value: object) -> None:
    with pytest.raises(PolicyInvalid) as info:
        load_policy(ra(tmp_path, ra_doc(verify_mr_enclave=value)))  # type: ignore[arg-type]
    assert info.value.key == "verify_mr_enclave" and 'exactly "on" or "off"' in info.value.problem


@pytest.mark.parametrize(
    ("doc", "key", "problem"),
    [
        (ra_doc(verify_mr_enclave="off", verify_mr_signer="off", verify_isv_prod_id="off", verify_isv_svn="off"),
         "", "every check is off"),
        (ra_doc(verify_mr_enclave="off", verify_mr_signer="off"), "", "neither"),
        (ra_doc(verify_mr_enclave="off", verify_isv_prod_id="off", verify_isv_svn="off"), "",
         "a signer alone would admit every enclave it ever signed"),
        (ra_doc(verify_mr_enclave="off", verify_isv_svn="off"), "", "needs verify_isv_prod_id and verify_isv_svn"),
        ({k: v for k, v in ra_doc().items() if k != "verify_isv_svn"}, "verify_isv_svn", "missing"),
        ({**ra_doc(), "verify_debug": "off"}, "verify_debug", "unknown key"),
        ({**ra_doc(), "mrs": []}, "mrs", "non-empty"),
        ({**ra_doc(), "mrs": [{"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "0"}]}, "mrs[0].isv_svn", "missing"),
        ({**ra_doc(), "mrs": [{"mr_enclave": "xyz", "mr_signer": MRS, "isv_prod_id": "0", "isv_svn": "0"}]},
         "mrs[0].mr_enclave", "64 hex"),
        ({**ra_doc(), "mrs": [{"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "-1", "isv_svn": "0"}]},
         "mrs[0].isv_prod_id", "integer"),
        ({**ra_doc(), "mrs": [{"mr_enclave": MRE, "mr_signer": MRS, "isv_prod_id": "0", "isv_svn": "0", "x": 1}]},
         "mrs[0].x", "unknown key"),
        ({**ra_doc(verify_mr_signer="off"),
          "mrs": [{"mr_enclave": MRE, "mr_signer": "garbage", "isv_prod_id": "0", "isv_svn": "0"}]},
         "mrs[0].mr_signer", "64 hex"),
        ("{", "", "not valid JSON"),
        ("", "", "empty"),
        ("{}", "", "empty ra_config"),
        ("[]", "", "empty ra_config"),
        ('"on"', "", "must be a table"),
    ],
)  # fmt: skip
def test_ra_config_fails_closed(tmp_path: Path, doc: object, key: str, problem: str) -> None:
    p = ra(tmp_path, doc)
    with pytest.raises(PolicyInvalid) as info:
        load_policy(p)
    assert info.value.key == key and problem in info.value.problem and str(p) in str(info.value)


def test_ra_config_inside_a_toml_policy(tmp_path: Path) -> None:
    ra(tmp_path, ra_doc())
    p = write_policy(tmp_path, 'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["sgx"]\n'
                               'tcb_statuses = ["SWHardeningNeeded"]\nra_config = "ra_config.json"\n')  # fmt: skip
    assert load_policy(p).evaluate(SGX, "k", now=NOW).accepted
    (tmp_path / "ra_config.json").write_text(json.dumps(ra_doc(verify_mr_enclave="o")))
    with pytest.raises(PolicyInvalid, match="ra_config.json: verify_mr_enclave"):
        load_policy(p)


# ----------------------------------------------------------------------------------- secrets


def test_secret_delivery_formats(tmp_path: Path) -> None:
    key = bytes(range(16))
    assert encode_secret(key, "raw") == key
    assert encode_secret(key, "hex") == key.hex().encode() + b"\0" and len(encode_secret(key, "hex")) == 33
    assert encode_secret(b"token", "string") == b"token\0"
    for data, fmt in ((b"short", "raw"), (b"x" * 17, "hex"), (b"a\0b", "string"), (b"x" * 4096, "string")):
        with pytest.raises(ValueError) as info:
            encode_secret(data, fmt)
        assert data.hex() not in str(info.value)


def test_read_secret(tmp_path: Path) -> None:
    p = sgx_policy(tmp_path)
    policy = load_policy(p)
    assert read_secret(policy, "model-key") == bytes(range(16))
    (tmp_path / "wrap-key").write_bytes(b"0123456789abcdef0")
    with pytest.raises(PolicyInvalid, match="secrets.model-key.file") as info:
        read_secret(policy, "model-key")
    assert "0123456789abcdef" not in str(info.value)
    (tmp_path / "wrap-key").unlink()
    with pytest.raises(PolicyInvalid, match="cannot read"):
        read_secret(policy, "model-key")
    with pytest.raises(UnknownSecret):
        read_secret(policy, "other")


# ------------------------------------------------------------------ TDX configuration: attributes, XFAM

TD_ATTRS = f"0x{TDX.quote.body.td_attributes:016x}"  # type: ignore[union-attr]  # 0x0000000010000000
XFAM = f"0x{TDX.quote.body.xfam:016x}"  # type: ignore[union-attr]  # 0x00000000000602e7


def tdx_policy(tmp_path: Path, extra: str) -> Path:
    return write_policy(tmp_path, f'version = 1\n[secrets.k]\nfile = "wrap-key"\ntee = ["tdx"]\n'
                                  f'[[secrets.k.tdx]]\nmr_td = "{MRTD}"\n{extra}\n')  # fmt: skip


def test_tdx_attributes_and_xfam_pinned_to_the_real_tds_values_accept_it(tmp_path: Path) -> None:
    p = tdx_policy(tmp_path, f'td_attributes = "{TD_ATTRS}"\nxfam = ["0x0000000000000003", "{XFAM}"]')
    assert load_policy(p).evaluate(TDX, "k", now=E_TDX["now_secs"]).accepted


def test_tdx_attributes_and_xfam_other_than_pinned_are_denied_with_both_values(tmp_path: Path) -> None:
    # The same MRTD with AMX/AVX-512 state off (XFAM 0x3) and without PKS is another configuration.
    p = tdx_policy(tmp_path, 'td_attributes = "0x0000000050000000"\nxfam = "0x0000000000000003"')
    verdict = load_policy(p).evaluate(TDX, "k", now=E_TDX["now_secs"])
    assert rules_of(verdict) == ["tdx.td_attributes", "tdx.xfam"]
    attrs, xfam = verdict.violations
    assert (attrs.expected, attrs.actual) == ("0x0000000050000000", TD_ATTRS)
    assert (xfam.expected, xfam.actual) == ("0x0000000000000003", XFAM)


def test_a_td_that_differs_only_in_an_attribute_bit_is_denied(tmp_path: Path) -> None:
    body = dataclasses.replace(TDX.quote.body, td_attributes=TDX.quote.body.td_attributes | 1 << 30)  # type: ignore[union-attr,operator]
    pks_td = dataclasses.replace(TDX, quote=dataclasses.replace(TDX.quote, body=body))
    policy = load_policy(tdx_policy(tmp_path, f'td_attributes = "{TD_ATTRS}"'))
    assert rules_of(policy.evaluate(pks_td, "k", now=E_TDX["now_secs"])) == ["tdx.td_attributes"]
    # Without the field, the always-on rules (DEBUG, SEPT_VE_DISABLE) alone judge, and PKS passes.
    unpinned = load_policy(tdx_policy(tmp_path, ""))
    assert unpinned.evaluate(pks_td, "k", now=E_TDX["now_secs"]).accepted


@pytest.mark.parametrize(
    "value",
    [
        '"0000000010000000"',  # no 0x: could be the quote's little-endian bytes as other tools print them
        '"0x10000000"',  # not 16 digits
        '"0x00000000100000000"',  # 17 digits
        "268435456",  # a TOML integer
        "[]",
        '"0x000000001000000g"',
    ],
)
def test_tdx_u64_fields_must_be_written_as_describe_prints_them(tmp_path: Path, value: str) -> None:
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tdx_policy(tmp_path, f"xfam = {value}"))
    assert "secrets.k.tdx[0].xfam" in str(info.value)
