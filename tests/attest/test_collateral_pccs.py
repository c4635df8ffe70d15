"""The PCCS client and the collateral cache, against a real HTTPS test PCCS on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from teeserve._errors import UsageError
from teeserve.attest import (
    CachingCollateralSource,
    Collateral,
    CollateralExpired,
    CollateralInvalid,
    CollateralUnavailable,
    PccsClient,
    parse_quote,
    verify_evidence,
)
from teeserve.attest._pccs import raw_json_member

from _attest_helpers import RunningPccs, collateral_path, entry, quote_of, running_pccs

SGX = entry("automata-sgx-v3-platform")  # SWHardeningNeeded, collateral 2025-08-15 .. 2025-09-14
TDX = entry("phala-tdx-v4")  # UpToDate


@pytest.fixture
def pccs(tmp_path: Path) -> Iterator[RunningPccs]:
    with running_pccs(tmp_path, [collateral_path(SGX)]) as server:
        yield server


@pytest.mark.parametrize("e", [SGX, TDX], ids=["sgx", "tdx"])
def test_fetch_reassembles_the_vector_collateral(tmp_path: Path, e: dict) -> None:
    q = parse_quote(quote_of(e))
    assert q.fmspc and q.pck_ca
    with running_pccs(tmp_path, [collateral_path(e)]) as pccs:
        got = PccsClient(pccs.url, ca_file=pccs.ca_file).fetch(q.tee, q.fmspc, q.pck_ca)
    want = json.loads(collateral_path(e).read_text())
    have = json.loads(got.json_text)
    for k, v in want.items():
        assert have[k] == v, k  # signed members byte for byte, CRLs hex, chains URL-decoded
    assert verify_evidence(q.raw, collateral=_static(got), now=e["now_secs"]).tcb_status == e["expected"]["status"]
    tee = q.tee
    assert f"/{tee}/certification/v4/tcb?fmspc={q.fmspc}&update=standard" in pccs.state.requests
    assert f"/{tee}/certification/v4/qe/identity?update=standard" in pccs.state.requests
    assert f"/sgx/certification/v4/pckcrl?ca={q.pck_ca}&encoding=der" in pccs.state.requests
    assert "/sgx/certification/v4/rootcacrl" in pccs.state.requests


class _static:
    def __init__(self, c: Collateral) -> None:
        self.c = c

    def get(self, quote, *, now):  # type: ignore[no-untyped-def]
        return self.c


def test_tls_is_verified_by_default(pccs: RunningPccs) -> None:
    client = PccsClient(pccs.url)  # the system store does not know the test CA
    with pytest.raises(CollateralUnavailable, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        client.fetch("sgx", "00606A000000", "platform")
    assert pccs.state.requests == []  # the handshake failed before any request


def test_plain_http_and_bad_ca_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="https"):
        PccsClient("http://127.0.0.1:8081")
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UsageError, match="CA file"):
        PccsClient("https://127.0.0.1:8081", ca_file=bad)


def test_unknown_fmspc_is_unavailable(pccs: RunningPccs) -> None:
    with pytest.raises(CollateralUnavailable, match="HTTP 404"):
        PccsClient(pccs.url, ca_file=pccs.ca_file).fetch("sgx", "FFFFFFFFFFFF", "platform")


def test_down_pccs_is_unavailable(pccs: RunningPccs) -> None:
    pccs.state.up = False
    with pytest.raises(CollateralUnavailable, match="HTTP 503"):
        PccsClient(pccs.url, ca_file=pccs.ca_file).fetch("sgx", "00606A000000", "platform")


def test_cache_sequence_pccs_down_then_expiry_fails_closed(pccs: RunningPccs, tmp_path: Path) -> None:
    """fetch → cached → PCCS down → still served from cache → past nextUpdate → CollateralExpired."""
    raw = quote_of(SGX)
    now = SGX["now_secs"]
    cache_dir = tmp_path / "cache"
    client = PccsClient(pccs.url, ca_file=pccs.ca_file)
    src = CachingCollateralSource(client, cache_dir, retry_after=0)

    v = verify_evidence(raw, collateral=src, now=now)
    assert v.tcb_status == "SWHardeningNeeded" and src.fetches == 1
    expiry = v.collateral_expiry
    assert expiry is not None
    cached = cache_dir / "sgx-00606A000000-platform.json"
    assert cached.exists()

    n = len(pccs.state.requests)
    assert verify_evidence(raw, collateral=src, now=now + 3600).tcb_status == "SWHardeningNeeded"
    assert src.fetches == 1 and len(pccs.state.requests) == n  # served from memory

    # a new process with the same cache directory: served from disk, no fetch
    src2 = CachingCollateralSource(client, cache_dir, retry_after=0)
    assert src2.get(parse_quote(raw), now=now + 7200).next_update == expiry
    assert src2.fetches == 0

    pccs.state.up = False
    # older than the refresh interval: a refresh is tried, fails, and the cached set is served
    later = now + 2 * 24 * 3600
    assert verify_evidence(raw, collateral=src2, now=later).tcb_status == "SWHardeningNeeded"
    assert src2.fetches == 1
    # inside the refresh margin before nextUpdate: still served (PCCS still down)
    assert src2.get(parse_quote(raw), now=expiry - 60).next_update == expiry
    # at / after nextUpdate: fail closed
    with pytest.raises(CollateralExpired, match="no fresh set could be fetched"):
        src2.get(parse_quote(raw), now=expiry)
    with pytest.raises(CollateralExpired):
        verify_evidence(raw, collateral=src2, now=expiry + 10)


def test_nothing_cached_and_pccs_down_is_unavailable(pccs: RunningPccs, tmp_path: Path) -> None:
    pccs.state.up = False
    src = CachingCollateralSource(PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path / "cache")
    with pytest.raises(CollateralUnavailable, match="HTTP 503"):
        src.get(parse_quote(quote_of(SGX)), now=SGX["now_secs"])


def test_refreshed_ahead_of_expiry(pccs: RunningPccs, tmp_path: Path) -> None:
    q = parse_quote(quote_of(SGX))
    src = CachingCollateralSource(
        PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path, refresh_interval=10**9, refresh_margin=3 * 86400
    )
    first = src.get(q, now=SGX["now_secs"])
    assert src.fetches == 1
    src.get(q, now=first.next_update - 3 * 86400 - 1)  # just before the margin: cached
    assert src.fetches == 1
    src.get(q, now=first.next_update - 3 * 86400)  # inside the margin: refreshed while still valid
    assert src.fetches == 2


def test_failed_fetch_is_not_retried_at_once(pccs: RunningPccs, tmp_path: Path) -> None:
    q = parse_quote(quote_of(SGX))
    src = CachingCollateralSource(PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path, retry_after=60)
    pccs.state.up = False
    now = SGX["now_secs"]
    with pytest.raises(CollateralUnavailable):
        src.get(q, now=now)
    with pytest.raises(CollateralUnavailable, match="not retrying"):
        src.get(q, now=now + 30)
    assert src.fetches == 1
    pccs.state.up = True
    assert src.get(q, now=now + 61).fmspc == "00606A000000"
    assert src.fetches == 2


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # (handed to the test)
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_slow_fetch_for_one_platform_holds_up_no_other_platform(tmp_path: Path) -> None:
    """The SGX platform's fetch hangs; a TDX platform's request meanwhile is fetched and answered.
    (A fetcher of the test's own: the two vectors' collateral windows do not overlap, so one test
    PCCS cannot serve both platforms' CRLs at once.)"""
    sgx, tdx = parse_quote(quote_of(SGX)), parse_quote(quote_of(TDX))
    assert sgx.fmspc != tdx.fmspc
    sets = {sgx.fmspc: Collateral.from_file(collateral_path(SGX)), tdx.fmspc: Collateral.from_file(collateral_path(TDX))}
    release, held = threading.Event(), threading.Event()

    class SlowForSgx:
        def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral:
            if fmspc == sgx.fmspc:
                held.set()
                release.wait(30)
            return sets[fmspc]

    src = CachingCollateralSource(SlowForSgx(), tmp_path)
    slow, slow_out = in_thread(lambda: src.get(sgx, now=SGX["now_secs"]))
    try:
        assert held.wait(10), "the SGX fetch never started"
        fast, fast_out = in_thread(lambda: src.get(tdx, now=TDX["now_secs"]))
        fast.join(10)
        assert not fast.is_alive(), "the TDX request waited for the SGX platform's fetch"
        assert fast_out == [sets[tdx.fmspc]] and slow.is_alive()
    finally:
        release.set()
    slow.join(10)
    assert slow_out == [sets[sgx.fmspc]] and src.fetches == 2
    assert src._locks == {}  # a platform's lock lives only while requests use it (keys come from clients)


def test_a_request_without_a_cached_set_waits_for_the_fetch_in_flight_then_gives_up(tmp_path: Path) -> None:
    q = parse_quote(quote_of(SGX))
    coll = Collateral.from_file(collateral_path(SGX))
    release, held = threading.Event(), threading.Event()

    class Slow:
        def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral:
            held.set()
            release.wait(30)
            return coll

    src = CachingCollateralSource(Slow(), None)
    src.wait_timeout = 0.5
    first, first_out = in_thread(lambda: src.get(q, now=SGX["now_secs"]))
    try:
        assert held.wait(10)
        with pytest.raises(CollateralUnavailable, match=r"fetching the collateral of sgx/00606A000000/platform "
                                                        r"for over 0.5 s"):
            src.get(q, now=SGX["now_secs"])
        assert src.fetches == 1  # it waited, it did not fetch a second time
    finally:
        release.set()
    first.join(10)
    assert first_out == [coll]
    assert src.get(q, now=SGX["now_secs"]) is coll and src.fetches == 1  # cached now: no wait, no fetch


def test_a_valid_cached_set_answers_while_its_refresh_is_in_flight(pccs: RunningPccs, tmp_path: Path) -> None:
    q = parse_quote(quote_of(SGX))
    src = CachingCollateralSource(PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path, refresh_interval=3600)
    first = src.get(q, now=SGX["now_secs"])
    later = SGX["now_secs"] + 7200  # due for a refresh, still valid
    assert first.valid_at(later)
    release = threading.Event()
    pccs.state.hold_tcb[str(q.fmspc).upper()] = release
    refresher, refreshed = in_thread(lambda: src.get(q, now=later))
    try:
        assert pccs.state.held.wait(10)
        # At once (well inside the PCCS client's own timeout): the refresh is another request's to wait for.
        quick, quick_out = in_thread(lambda: src.get(q, now=later))
        quick.join(3)
        assert not quick.is_alive(), "a request with a valid cached set waited for the refresh"
        assert quick_out[0] is first
    finally:
        release.set()
    refresher.join(10)
    assert refreshed[0].fmspc == q.fmspc and src.fetches == 2


def test_an_unwritable_cache_folder_still_serves_the_fetched_set(pccs: RunningPccs, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A cache folder that cannot be made (here a file is in its way; in a container, a read-only root
    and HOME=/nonexistent) must not turn a good fetch into a denial."""
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    q = parse_quote(quote_of(SGX))
    src = CachingCollateralSource(PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path / "taken" / "cache")
    assert src.get(q, now=SGX["now_secs"]).fmspc == "00606A000000"
    assert "cannot write the collateral cache file" in caplog.text and "kept in memory only" in caplog.text
    assert src.get(q, now=SGX["now_secs"] + 1).fmspc == "00606A000000" and src.fetches == 1  # from memory


def test_an_oversize_pccs_answer_is_refused_not_read_whole(pccs: RunningPccs) -> None:
    from teeserve.attest._pccs import MAX_RESPONSE_BYTES

    q = parse_quote(quote_of(SGX))
    client = PccsClient(pccs.url, ca_file=pccs.ca_file)
    pccs.state.tcb_padding = MAX_RESPONSE_BYTES  # the document plus this is over the cap
    with pytest.raises(CollateralInvalid, match=f"TCB info: response from .* is over {MAX_RESPONSE_BYTES} bytes"):
        client.fetch(q.tee, q.fmspc, q.pck_ca)
    pccs.state.tcb_padding = 1000  # whitespace within the cap is still fine
    assert client.fetch(q.tee, q.fmspc, q.pck_ca).fmspc == q.fmspc


def test_the_intel_pcs_root_crl_fetch_leaves_the_base_url_alone(pccs: RunningPccs) -> None:
    """The root CRL of Intel's PCS is fetched from an absolute URL; that fetch used to blank the
    client's shared base URL meanwhile, so a fetch for another platform at the same moment built a
    relative URL and failed with an uncaught ValueError."""
    client = PccsClient(pccs.url, ca_file=pccs.ca_file)
    seen = []
    real = client._get_url

    def spy(url: str, what: str) -> Any:
        seen.append(client.base_url)
        return real(url, what)

    client._get_url = spy  # type: ignore[method-assign]
    client._get_absolute(f"{pccs.url}/sgx/certification/v4/rootcacrl")
    assert seen == [pccs.url]
    with pytest.raises(CollateralUnavailable, match="unknown url type"):  # a bad URL is ours, not a crash
        client._get_url("not-a-url", "root CA CRL")


def test_corrupt_cache_file_is_refetched(pccs: RunningPccs, tmp_path: Path) -> None:
    q = parse_quote(quote_of(SGX))
    (tmp_path / "sgx-00606A000000-platform.json").write_text("{garbage")
    src = CachingCollateralSource(PccsClient(pccs.url, ca_file=pccs.ca_file), tmp_path)
    assert src.get(q, now=SGX["now_secs"]).fmspc == "00606A000000"
    assert src.fetches == 1
    doc = json.loads((tmp_path / "sgx-00606A000000-platform.json").read_text())
    assert doc["fetched_at"] == SGX["now_secs"]


def test_a_fake_fetcher_behind_the_cache(tmp_path: Path) -> None:
    """The cache works with any fetcher (here a dict-backed fake returning the vector set)."""
    coll = Collateral.from_file(collateral_path(SGX))

    class Fake:
        calls = 0

        def fetch(self, tee: str, fmspc: str, ca: str) -> Collateral:
            Fake.calls += 1
            if fmspc != coll.fmspc:
                raise CollateralUnavailable("no such fmspc")
            return coll

    src = CachingCollateralSource(Fake(), None)
    q = parse_quote(quote_of(SGX))
    assert src.get(q, now=SGX["now_secs"]) is coll
    assert src.get(q, now=SGX["now_secs"] + 1) is coll and Fake.calls == 1


def test_raw_json_member_keeps_exact_bytes() -> None:
    body = '{ "tcbInfo" : {"b":1,  "a":[1, 2]} , "signature":"ab"}'
    assert raw_json_member(body, "tcbInfo") == '{"b":1,  "a":[1, 2]}'
    assert raw_json_member(body, "signature") == '"ab"'
    for bad in ("[]", '{"x":1}', '{"tcbInfo" 1}'):
        with pytest.raises(ValueError):
            raw_json_member(bad, "tcbInfo")


def test_malformed_pccs_body_is_invalid(pccs: RunningPccs) -> None:
    good = pccs.state.collaterals[0]
    pccs.state.collaterals[0] = {**good, "tcb_info_signature": 'x"'}  # breaks the response JSON
    with pytest.raises(CollateralInvalid, match="TCB info"):
        PccsClient(pccs.url, ca_file=pccs.ca_file).fetch("sgx", "00606A000000", "platform")
