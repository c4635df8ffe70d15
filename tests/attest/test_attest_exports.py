"""The public surface of teeserve.attest is exactly its __all__ (and sim's is the agreed API)."""

from __future__ import annotations

import inspect

import teeserve.attest as attest
from teeserve.attest import sim


def test_all_matches_public_names() -> None:
    public = {n for n in dir(attest) if not n.startswith("_")} - {"annotations", "evidence", "ratls"}
    public = {n for n in public if not inspect.ismodule(getattr(attest, n)) or n == "sim"}
    assert set(attest.__all__) == public
    assert len(attest.__all__) == len(set(attest.__all__))


def test_every_error_is_a_teeserve_error() -> None:
    from teeserve import TeeserveError

    for name in attest.__all__:
        obj = getattr(attest, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, TeeserveError), name
    assert not issubclass(attest.PolicyViolation, attest.QuoteVerificationFailed)
    assert not issubclass(attest.QuoteVerificationFailed, attest.PolicyError)


def test_sim_api_names_and_signatures() -> None:
    for name in ("init_key", "load_signing_key", "load_public_key", "code_measurement", "make_quote",
                 "is_simulated", "verify_quote"):  # fmt: skip
        assert name in sim.__all__ and callable(getattr(sim, name))
    assert list(inspect.signature(sim.make_quote).parameters) == [
        "signing_key", "report_data", "mr_enclave", "isv_prod_id", "isv_svn", "debug"
    ]
    assert list(inspect.signature(sim.init_key).parameters) == ["out_dir", "force"]
    assert list(inspect.signature(attest.verify_evidence).parameters) == ["raw_quote", "collateral", "sim_keys", "now"]
