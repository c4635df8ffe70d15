"""The broker end to end on 127.0.0.1 (real TLS, simulated TEE): releases, formats, named secrets,
the negative catalogue of issue 4 §7 (each denied, audited, and the broker keeps serving)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from teeserve import provision
from teeserve.attest import FileCollateralSource, ratls, sim
from teeserve.broker import KeyReleaseDenied

from _broker_helpers import (
    DEFAULT_KEY, HEX_KEY, MODEL_KEY, fetch_with, forge, new_key, obtain, raw_tls, read_all, sim_credentials,
    sim_quote_for, spki,
)  # fmt: skip

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "dcap"


def good(run: Any, pki: Any, sim_keys: Any) -> None:
    """A good client succeeds (the broker keeps serving after whatever came before)."""
    assert obtain(run.addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}


def last_denial(run: Any) -> dict[str, Any]:
    rows = run.rows()
    assert rows, "nothing audited"
    denied = [r for r in rows if r["decision"] == "denied"]
    assert denied, f"no denial audited: {rows}"
    return denied[-1]


def test_default_and_named_secrets_raw_and_hex(start_broker, pki, sim_keys) -> None:
    run = start_broker()
    got = obtain(run.addr, pki.ca, sim_keys.key, ("default", "hex-key"))
    assert got == {"default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0"}
    assert provision.decode_secret(got["hex-key"], "hex") == HEX_KEY
    # model-key needs ISV_PROD_ID 7 and ISV_SVN >= 3 (a minimum: 5 is accepted too)
    for svn in (3, 5):
        got = obtain(run.addr, pki.ca, sim_keys.key, ("model-key",), provider_options={"isv_prod_id": 7, "isv_svn": svn})
        assert got == {"model-key": MODEL_KEY}
    rows = run.rows()
    assert [(r["secret"], r["decision"]) for r in rows] == [
        ("default", "released"), ("hex-key", "released"), ("default", "released"), ("model-key", "released"),
        ("default", "released"), ("model-key", "released"),
    ]  # fmt: skip
    assert all(r["simulated"] and "SIMULATED" in r["tee"] and "SIMULATED" in r["reason"] for r in rows)
    assert rows[0]["rule"] == "secrets.default.sim[0]" and rows[3]["rule"] == "secrets.model-key.sim[0]"
    assert rows[0]["measurements"]["mr_enclave"] == "5e" * 32
    run.audit.verify()
    text = run.metrics.render().decode()
    assert 'teeserve_broker_attempts_total{decision="released",reason="released",tee="sim"} 6.0' in text


def test_hex_default_secret_for_old_gramine(start_broker, broker_dir, pki, sim_keys, mr_enclave) -> None:
    from _broker_helpers import policy_text

    (broker_dir / "policy.toml").write_text(policy_text(sim_keys, mr_enclave, default_format="hex"))
    run = start_broker()
    creds = sim_credentials(sim_keys.key)
    secret = asyncio.run(fetch_with(run.addr, pki.ca, creds))  # plain Gramine request, no extension
    assert secret == DEFAULT_KEY.hex().encode() + b"\0" and len(secret) == 33


@pytest.mark.parametrize(("key_type", "dice"), [("ec-p384", True), ("ec-p256", True), ("rsa-3072", False)])
def test_gramine_client_key_types_get_the_default_secret(start_broker, pki, sim_keys, key_type, dice) -> None:
    """Gramine >= 1.8 (P-384/P-256, DICE + legacy), <= 1.3 (RSA-3072, legacy only): plain request, raw key."""
    from teeserve.attest.evidence import SimProvider
    from _broker_helpers import MR_ENCLAVE

    run = start_broker()
    creds = ratls.make_certificate(SimProvider(sim_keys.key, mr_enclave=MR_ENCLAVE), key_type=key_type, dice=dice)
    assert asyncio.run(fetch_with(run.addr, pki.ca, creds)) == DEFAULT_KEY
    assert [r["decision"] for r in run.rows()] == ["released"]


def test_denied_client_receives_nothing(start_broker, pki, sim_keys, tmp_path) -> None:
    run = start_broker()
    creds = sim_credentials(sim_keys.key, mr_enclave=bytes(32))
    with raw_tls(run.addr, pki.ca, creds, tmp_path) as s:
        s.sendall(provision.REQUEST_MAGIC)
        assert read_all(s) == b""  # not a byte: no error text, no alert payload of ours
    assert "sim.mr_enclave" in last_denial(run)["reason"]
    good(run, pki, sim_keys)


# ---- the negative catalogue (issue 4 §7), live over RA-TLS ------------------------------------------


def _denied_fetch(run: Any, pki: Any, creds: Any) -> None:
    with pytest.raises(provision.ProvisionDenied):
        asyncio.run(fetch_with(run.addr, pki.ca, creds))


def test_simulated_measurement_covers_code_and_config(start_broker, broker_dir, pki, sim_keys) -> None:
    """obtain_secrets(tee="sim") measures the installed code + config, as the policy pins it."""
    from _broker_helpers import CONFIG, policy_text

    measured = sim.code_measurement(CONFIG).hex()
    (broker_dir / "policy.toml").write_text(policy_text(sim_keys, measured))
    run = start_broker()
    assert obtain(run.addr, pki.ca, sim_keys.key, measured=True) == {"default": DEFAULT_KEY}
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key, measured=True, config=b"another configuration")
    assert "sim.mr_enclave" in last_denial(run)["reason"]


def test_tampered_quote(start_broker, pki, sim_keys, mr_enclave) -> None:
    run = start_broker()
    key = new_key()
    quote = bytearray(sim_quote_for(sim_keys.key, spki(key), bytes.fromhex(mr_enclave)))
    quote[112] ^= 0x01  # a byte of MRENCLAVE: the signature no longer verifies
    _denied_fetch(run, pki, forge(key, bytes(quote)))
    row = last_denial(run)
    assert "signature does not verify" in row["reason"] and "SIMULATED" in row["reason"]
    good(run, pki, sim_keys)


def test_quote_not_bound_to_tls_key(start_broker, pki, sim_keys, mr_enclave) -> None:
    run = start_broker()
    key, other = new_key(), new_key()
    quote = sim_quote_for(sim_keys.key, spki(other), bytes.fromhex(mr_enclave))  # genuine, but for another key
    _denied_fetch(run, pki, forge(key, quote))
    row = last_denial(run)
    assert "RA-TLS certificate rejected" in row["reason"] and "report_data" in row["reason"]
    assert row["measurements"]["verified"] is False and row["measurements"]["mr_enclave"] == mr_enclave
    good(run, pki, sim_keys)


@pytest.mark.parametrize(
    ("secret", "options", "rule"),
    [
        ("default", {"provider_options": {"mr_enclave": bytes(32)}}, "sim.mr_enclave"),
        ("model-key", {"sim_key": "key2", "provider_options": {"isv_prod_id": 7, "isv_svn": 3}}, "sim.mr_signer"),
        ("model-key", {"provider_options": {"isv_prod_id": 8, "isv_svn": 3}}, "sim.isv_prod_id"),
        ("model-key", {"provider_options": {"isv_prod_id": 7, "isv_svn": 2}}, "sim.isv_svn"),
        ("tcb-strict", {}, "tcb_status"),
        ("nope", {}, "-"),
    ],
    ids=["wrong-mrenclave", "wrong-mrsigner", "wrong-isv-prod-id", "isv-svn-below-minimum", "tcb-status-not-allowed",
         "unknown-secret"],
)  # fmt: skip
def test_identity_tcb_and_unknown_secret_denied(start_broker, pki, sim_keys, secret, options, rule) -> None:
    run = start_broker()
    key = sim_keys.key2 if options.pop("sim_key", None) == "key2" else sim_keys.key
    wanted = ("default",) if secret == "default" else ("default", secret)
    with pytest.raises(KeyReleaseDenied) as info:
        obtain(run.addr, pki.ca, key, wanted, **options)
    assert info.value.secret == secret
    row = last_denial(run)
    assert row["secret"] == secret
    if rule == "-":
        assert "no secret named 'nope'" in row["reason"]
    else:
        assert rule in row["rule"] and rule in row["reason"] and "SIMULATED" in row["reason"]
    run.audit.verify()
    good(run, pki, sim_keys)


def test_dice_evidence_without_pubkey_hash_is_refused(start_broker, pki, sim_keys, mr_enclave) -> None:
    """Gramine does not require the DICE 'pubkey-hash' claim; teeserve does (else nothing binds the key)."""
    import cbor2

    from teeserve.attest.ratls._dice import encode_evidence

    run = start_broker()
    claims = cbor2.dumps({"nonce": b"\x01" * 32})
    quote = sim.make_quote(sim.load_signing_key(sim_keys.key), ratls.key_binding_report_data(claims),
                           mr_enclave=bytes.fromhex(mr_enclave))  # fmt: skip
    _denied_fetch(run, pki, forge(new_key(), None, extra_ext=(ratls.DICE_EVIDENCE_OID, encode_evidence(quote, claims))))
    row = last_denial(run)
    assert "pubkey-hash" in row["reason"] and row["measurements"]["mr_enclave"] == mr_enclave
    good(run, pki, sim_keys)


def test_debug_enclave(start_broker, pki, sim_keys) -> None:
    run = start_broker()
    _denied_fetch(run, pki, sim_credentials(sim_keys.key, debug=True))
    row = last_denial(run)
    assert "Debug" in row["reason"] and row["measurements"]["attributes"].count("DEBUG") == 1
    good(run, pki, sim_keys)


def test_untrusted_simulation_key(start_broker, pki, sim_keys) -> None:
    run = start_broker()
    _denied_fetch(run, pki, sim_credentials(sim_keys.untrusted))
    row = last_denial(run)
    assert "untrusted key" in row["reason"] and row["simulated"]
    assert 'reason="simulation",tee="sim"' in run.metrics.render().decode()
    good(run, pki, sim_keys)


def test_simulated_quote_without_simulation_allowed(start_broker, broker_dir, pki, sim_keys) -> None:
    """The reference deployment's ra_config.json, accepted as is: SGX only, no simulation."""
    (broker_dir / "ra_config.json").write_text(
        '{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",'
        f'"mrs":[{{"mr_enclave":"{"ab" * 32}","mr_signer":"{"cd" * 32}","isv_prod_id":"0","isv_svn":"0"}}]}}'
    )
    (broker_dir / "wrap_key").write_bytes(DEFAULT_KEY)
    collateral = FileCollateralSource(VECTORS / "automata-dcap-attestation" / "collateral_sgx_00606a000000_0825.json")
    run = start_broker(collateral=collateral, policy_path=broker_dir / "ra_config.json")
    _denied_fetch(run, pki, sim_credentials(sim_keys.key))
    row = last_denial(run)
    assert "SIMULATED quote, and no simulation key is trusted" in row["reason"] and row["tee"] == "sim (SIMULATED)"
    assert 'reason="simulation"' in run.metrics.render().decode()


def test_malformed_certificates(start_broker, pki, sim_keys, tmp_path) -> None:
    import os

    run = start_broker()
    _denied_fetch(run, pki, forge(new_key(), None))  # an ordinary certificate: no RA-TLS evidence
    assert "no RA-TLS quote extension" in last_denial(run)["reason"]
    _denied_fetch(run, pki, forge(new_key(), os.urandom(700)))  # garbage in the quote extension
    assert last_denial(run)["reason"].startswith("RA-TLS certificate rejected")
    # a DICE extension whose CBOR is garbage
    _denied_fetch(run, pki, forge(new_key(), None, extra_ext=(ratls.DICE_EVIDENCE_OID, b"\x82" + bytes(400))))
    assert last_denial(run)["reason"].startswith("RA-TLS certificate rejected")
    assert len([r for r in run.rows() if r["decision"] == "denied"]) == 3
    good(run, pki, sim_keys)


def test_wrong_request_magic_and_oversize_messages(start_broker, pki, sim_keys, tmp_path) -> None:
    run = start_broker()
    creds = sim_credentials(sim_keys.key)  # a good certificate: only the bytes are wrong
    with raw_tls(run.addr, pki.ca, creds, tmp_path) as s:
        s.sendall(b"SECRET_PROVISION_RA_TLS_REQUEST_V2\0")
        assert read_all(s) == b""  # nothing at all is sent to a refused client
    assert last_denial(run)["rule"] == "-" and "malformed or missing request" in last_denial(run)["reason"]
    with raw_tls(run.addr, pki.ca, creds, tmp_path) as s:
        try:
            s.sendall(b"A" * (1 << 20))  # 1 MiB where a 35-byte request belongs
        except OSError:
            pass
        assert read_all(s) == b""
    assert "malformed or missing request" in last_denial(run)["reason"]
    # an attested session whose named request announces an oversize name: closed after the default secret
    with raw_tls(run.addr, pki.ca, creds, tmp_path) as s:
        s.sendall(provision.REQUEST_MAGIC)
        s.sendall(b"TEESERVE_SECRET_REQUEST_V1\0\xff\xff" + b"x" * 1000)
        data = read_all(s)
    assert data.startswith(provision.RESPONSE_MAGIC) and len(data) == provision.RESPONSE_HEADER_SIZE + 16
    row = last_denial(run)
    assert row["rule"] == "extension" and "name length 65535" in row["reason"]
    assert 'reason="protocol"' in run.metrics.render().decode()
    good(run, pki, sim_keys)


def test_slow_client_does_not_block_a_good_one(start_broker, pki, sim_keys, tmp_path) -> None:
    run = start_broker(timeout=1.0, max_clients=4)
    creds = sim_credentials(sim_keys.key)
    with raw_tls(run.addr, pki.ca, creds, tmp_path) as slow:
        slow.sendall(provision.REQUEST_MAGIC[:10])  # then nothing: a slow loris
        good(run, pki, sim_keys)  # served while the slow session still holds its slot
        active = re.search(r"teeserve_broker_active_connections (\d+)", run.metrics.render().decode())
        assert active and int(active.group(1)) >= 1
        assert read_all(slow) == b""  # dropped at the deadline without a byte
    row = last_denial(run)
    assert "slow or silent client" in row["reason"]
    good(run, pki, sim_keys)


def test_many_clients_at_once(start_broker, pki, sim_keys) -> None:
    run = start_broker(max_clients=4)

    async def many() -> list[dict[str, bytes]]:
        from teeserve.broker import obtain_secrets
        from _broker_helpers import CONFIG, MR_ENCLAVE

        return await asyncio.gather(*(
            obtain_secrets(tee="sim", broker=run.addr, broker_ca=pki.ca, secrets=("default", "hex-key"),
                           sim_key=sim_keys.key, config=CONFIG, timeout=10,
                           provider_options={"mr_enclave": MR_ENCLAVE})
            for _ in range(12)
        ))  # fmt: skip

    results = asyncio.run(many())
    assert all(r == {"default": DEFAULT_KEY, "hex-key": HEX_KEY.hex().encode() + b"\0"} for r in results)
    assert len(run.rows()) == 24 and run.audit.verify() == 24
    assert "teeserve_broker_active_connections 0.0" in run.metrics.render().decode()


def test_rate_limit_per_peer(start_broker, pki, sim_keys) -> None:
    run = start_broker(rate=0.01, burst=2)
    good(run, pki, sim_keys)
    good(run, pki, sim_keys)
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key)
    row = last_denial(run)
    assert row["reason"].startswith("rate limit") and row["peer"].startswith("127.0.0.1:")
    assert 'reason="rate_limited"' in run.metrics.render().decode()


def test_broker_wrong_ca_is_not_trusted_by_the_tee(start_broker, pki, sim_keys) -> None:
    run = start_broker()
    with pytest.raises(provision.ProvisionTLSError):
        obtain(run.addr, pki.other_ca, sim_keys.key)
    assert run.rows() == []  # never got as far as a request


def test_a_release_that_cannot_be_audited_does_not_happen(start_broker, pki, sim_keys, caplog) -> None:
    run = start_broker()
    good(run, pki, sim_keys)
    run.audit.close()  # the audit database becomes unusable
    with pytest.raises(KeyReleaseDenied):
        obtain(run.addr, pki.ca, sim_keys.key)
    assert "audit append failed" in caplog.text and "the attempt is denied" in caplog.text
    assert 'decision="denied",reason="internal",tee="sim"} 1.0' in run.metrics.render().decode()


def test_against_a_plain_provisioning_server(pki, sim_keys) -> None:
    """A Gramine-style server (no extension): the default secret works, a named one fails clearly."""
    server = provision.ProvisionServer("127.0.0.1", 0, pki.cert, pki.key, lambda cert, peer: DEFAULT_KEY).start()
    try:
        addr = f"127.0.0.1:{server.port}"
        assert obtain(addr, pki.ca, sim_keys.key) == {"default": DEFAULT_KEY}
        from teeserve.broker import ExtensionProtocolError

        with pytest.raises(ExtensionProtocolError, match="named-secret extension"):
            obtain(addr, pki.ca, sim_keys.key, ("default", "model-key"))
    finally:
        server.stop()


def test_a_named_request_sent_a_byte_at_a_time_ends_with_the_timeout(start_broker, pki, sim_keys) -> None:
    """`--timeout` bounds each named request as a whole: it used to restart with every read, so an
    attested client sending one byte every so often held its session (and a slot) for hours."""
    import time

    from teeserve.broker._extension import encode_request

    run = start_broker(timeout=1.0)
    creds = sim_credentials(sim_keys.key)

    async def drip() -> float:
        async with provision.open_session(run.addr, pki.ca, creds, timeout=10) as session:
            assert session.secret == DEFAULT_KEY

            async def closed() -> None:
                try:
                    while await session.receive():
                        pass
                except Exception:  # noqa: BLE001 - a reset is a close too
                    pass

            watcher = asyncio.ensure_future(closed())
            t0 = time.monotonic()
            for byte in encode_request("hex-key")[:-1]:  # never complete
                if watcher.done():
                    break
                try:
                    await session.send(bytes([byte]))
                except Exception:  # noqa: BLE001 - the server has gone
                    break
                await asyncio.sleep(0.2)
            await asyncio.wait_for(watcher, 10)
            return time.monotonic() - t0

    elapsed = asyncio.run(drip())
    # closed after about 1 s, long before the ~7 s the 36 bytes take at this pace
    assert elapsed < 3.0, elapsed
    good(run, pki, sim_keys)  # and the broker serves on
