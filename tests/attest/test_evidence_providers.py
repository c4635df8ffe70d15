"""Evidence providers against pseudo-file trees laid out by the tests.

The fake /dev/attestation and configfs-tsm trees use a FIFO for the file the TEE generates (``quote``,
``outblob``): a "fake TEE" thread blocks opening it for writing until the provider opens it for
reading, which happens only after the provider wrote the report data, exactly like the real
pseudo-files that generate the quote on open/read. The thread then reads what was written and
answers with a simulated quote over it.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from teeserve._errors import UsageError
from teeserve.attest import evidence, sim
from teeserve.attest.evidence import (
    ConcurrentReportError,
    EvidenceIOError,
    EvidenceUnavailable,
    GramineProvider,
    SimProvider,
    TsmReportProvider,
    WrongAttestationType,
    get_provider,
)

REPORT_DATA_OFFSET = 368  # SGX v3 quote (dcap-attestation.md §4.2)


@pytest.fixture(scope="module")
def sim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sim.init_key(tmp_path_factory.mktemp("simkey"))


def _open_fifo_for_write(path: Path, stop: threading.Event) -> int | None:
    """Open a FIFO for writing once a reader appears (ENXIO until then); None if stopped."""
    while not stop.is_set():
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.ENOENT):
                raise
            time.sleep(0.005)
    return None


class FakeGramine:
    """A /dev/attestation tree whose ``quote`` is produced after reading ``user_report_data``."""

    def __init__(self, root: Path, key_path: Path, attestation_type: bytes | None = b"dcap") -> None:
        self.root = root
        root.mkdir()
        if attestation_type is not None:
            (root / "attestation_type").write_bytes(attestation_type)
        (root / "user_report_data").write_bytes(bytes(64))
        os.mkfifo(root / "quote")
        (root / "keys").mkdir()
        (root / "keys" / "default").write_bytes(b"")
        self.key = sim.load_signing_key(key_path)
        self.seen: list[bytes] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def serve(self, count: int = 1) -> None:
        def run() -> None:
            for _ in range(count):
                fd = _open_fifo_for_write(self.root / "quote", self.stop)
                if fd is None:
                    return
                report_data = (self.root / "user_report_data").read_bytes()
                self.seen.append(report_data)
                quote = sim.make_quote(self.key, report_data[:64], mr_enclave=b"\x11" * 32)
                os.set_blocking(fd, True)
                os.write(fd, quote)
                # A fresh FIFO for the next open, so the next writer cannot attach to this reader
                # (the real pseudo-file generates a new quote on every open).
                os.mkfifo(self.root / "quote.next")
                os.rename(self.root / "quote.next", self.root / "quote")
                os.close(fd)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)


@pytest.fixture
def gramine(tmp_path: Path, sim_key: tuple[Path, Path]):
    fake = FakeGramine(tmp_path / "attestation", sim_key[0])
    yield fake
    fake.close()


def test_gramine_quote_over_written_report_data(
    gramine: FakeGramine, sim_key: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, int]] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append((os.readlink(f"/proc/self/fd/{fd}"), len(data)))
        return real_write(fd, data)

    report_data = bytes(range(64))
    gramine.serve()
    provider = GramineProvider(gramine.root)
    monkeypatch.setattr(os, "write", spy)
    quote = provider.get_quote(report_data)
    monkeypatch.undo()
    assert gramine.seen == [report_data]
    assert quote[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == report_data
    assert sim.verify_quote(quote, [sim.load_public_key(sim_key[1])]).report_data == report_data
    # exactly one write of all 64 bytes to user_report_data
    report_writes = [w for w in writes if w[0].endswith("user_report_data")]
    assert report_writes == [(str(gramine.root / "user_report_data"), 64)]
    assert provider.kind == "sgx"


def test_gramine_serializes_concurrent_callers(gramine: FakeGramine) -> None:
    provider = GramineProvider(gramine.root)
    gramine.serve(count=6)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = provider.get_quote(bytes([i]) * 64)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    for i, quote in results.items():
        assert quote[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == bytes([i]) * 64
    assert sorted(gramine.seen) == sorted(bytes([i]) * 64 for i in range(6))


@pytest.mark.parametrize("kind", [b"epid", b"none"])
def test_gramine_wrong_attestation_type(tmp_path: Path, sim_key: tuple[Path, Path], kind: bytes) -> None:
    fake = FakeGramine(tmp_path / "att", sim_key[0], attestation_type=kind)
    with pytest.raises(WrongAttestationType, match="dcap"):
        GramineProvider(fake.root).get_quote(bytes(64))
    assert (fake.root / "user_report_data").read_bytes() == bytes(64)  # nothing written


def test_gramine_without_attestation_type_file_works(tmp_path: Path, sim_key: tuple[Path, Path]) -> None:
    fake = FakeGramine(tmp_path / "att", sim_key[0], attestation_type=None)
    fake.serve()
    try:
        quote = GramineProvider(fake.root).get_quote(b"\x42" * 64)
    finally:
        fake.close()
    assert quote[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == b"\x42" * 64


def test_gramine_missing_tree_and_quote(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="not found"):
        GramineProvider(tmp_path / "nope").get_quote(bytes(64))
    root = tmp_path / "att"
    root.mkdir()
    (root / "user_report_data").write_bytes(b"")
    with pytest.raises(EvidenceUnavailable, match="quote"):
        GramineProvider(root).get_quote(bytes(64))
    (root / "quote").write_bytes(b"")
    with pytest.raises(EvidenceIOError, match="empty"):
        GramineProvider(root).get_quote(bytes(64))


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65)])
def test_report_data_must_be_64_bytes(gramine: FakeGramine, bad: bytes) -> None:
    with pytest.raises(ValueError, match="64"):
        GramineProvider(gramine.root).get_quote(bad)
    with pytest.raises(TypeError):
        GramineProvider(gramine.root).get_quote("x" * 64)  # type: ignore[arg-type]


def test_gramine_write_key(gramine: FakeGramine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append(len(data)) or real_write(fd, data))
    GramineProvider(gramine.root).write_key("default", b"K" * 16)
    monkeypatch.undo()
    assert calls == [16]
    assert (gramine.root / "keys" / "default").read_bytes() == b"K" * 16
    with pytest.raises(ValueError, match="16"):
        GramineProvider(gramine.root).write_key("default", b"K" * 32)
    with pytest.raises(EvidenceUnavailable, match="no such key"):
        GramineProvider(gramine.root).write_key("unknown", b"K" * 16)
    for bad_name in ("", "../x", "a/b", ".."):
        with pytest.raises(ValueError, match="key name"):
            GramineProvider(gramine.root).write_key(bad_name, b"K" * 16)


# -- configfs-tsm ---------------------------------------------------------------------------------


class FakeTsm:
    """A configfs-tsm report directory. ``mkdir`` emulates configfs creating the attribute files."""

    def __init__(self, root: Path, key_path: Path, provider: str = "tdx_guest", races: int = 0) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.provider = provider
        self.races = races  # how many attempts see the generation change under them
        self.key = sim.load_signing_key(key_path)
        self.created: list[Path] = []
        self.removed: list[Path] = []
        self.inblobs: list[bytes] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("1\n")
        (path / "inblob").write_bytes(b"")
        os.mkfifo(path / "outblob")
        self.created.append(path)
        racy = len(self.created) <= self.races
        thread = threading.Thread(target=self._kernel, args=(path, racy), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _kernel(self, path: Path, racy: bool) -> None:
        fd = _open_fifo_for_write(path / "outblob", self.stop)
        if fd is None:
            return
        inblob = (path / "inblob").read_bytes()
        self.inblobs.append(inblob)
        if racy:  # another writer hit the entry between the provider's two generation reads
            (path / "generation").write_text("2\n")
        os.set_blocking(fd, True)
        os.write(fd, sim.make_quote(self.key, inblob, mr_enclave=b"\x22" * 32))
        os.close(fd)

    def rmdir(self, path: Path) -> None:
        self.removed.append(path)
        shutil.rmtree(path)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)

    def provider_for(self, **kw: object) -> TsmReportProvider:
        return TsmReportProvider(
            self.root, mkdir=self.mkdir, rmdir=self.rmdir, **kw  # type: ignore[arg-type]
        )


@pytest.fixture
def tsm_factory(tmp_path: Path, sim_key: tuple[Path, Path]):
    fakes: list[FakeTsm] = []

    def make(**kw: object) -> FakeTsm:
        fake = FakeTsm(tmp_path / f"tsm{len(fakes)}" / "report", sim_key[0], **kw)  # type: ignore[arg-type]
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()


def test_tsm_report(tsm_factory) -> None:
    fake = tsm_factory()
    provider = fake.provider_for()
    report_data = bytes(range(64, 128))
    report = provider.get_report(report_data)
    assert fake.inblobs == [report_data]
    assert report.provider == "tdx_guest" and report.generation == 1 and report.auxblob is None
    assert report.outblob[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == report_data
    assert provider.kind == "tdx"
    assert fake.removed == fake.created and len(fake.created) == 1
    assert list(fake.root.iterdir()) == []
    assert provider.get_quote(report_data)[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == report_data


def test_tsm_retries_on_generation_change(tsm_factory) -> None:
    fake = tsm_factory(races=2)
    quote = fake.provider_for(retries=3).get_quote(b"\x01" * 64)
    assert quote[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == b"\x01" * 64
    assert len(fake.created) == 3 and fake.removed == fake.created


def test_tsm_gives_up_after_retries(tsm_factory) -> None:
    fake = tsm_factory(races=99)
    with pytest.raises(ConcurrentReportError, match="3 attempts"):
        fake.provider_for(retries=3).get_quote(b"\x01" * 64)
    assert len(fake.created) == 3 and fake.removed == fake.created


def test_tsm_provider_checked(tsm_factory) -> None:
    fake = tsm_factory(provider="sev_guest")
    with pytest.raises(WrongAttestationType, match="sev_guest"):
        fake.provider_for().get_quote(bytes(64))
    assert fake.removed == fake.created  # entry removed on failure too
    assert fake.inblobs == []  # nothing was written before the provider check
    snp = fake.provider_for(provider="sev_guest")
    assert snp.kind == "sev-snp"
    assert snp.get_report(bytes(64)).provider == "sev_guest"


def test_tsm_missing(tmp_path: Path) -> None:
    with pytest.raises(EvidenceUnavailable, match="configfs-tsm"):
        TsmReportProvider(tmp_path / "none").get_quote(bytes(64))
    with pytest.raises(ValueError):
        TsmReportProvider(tmp_path, provider="bogus")


def test_tsm_real_mkdir_on_plain_directory_fails_cleanly(tmp_path: Path) -> None:
    # Without configfs, a plain mkdir creates no attribute files: a clear EvidenceIOError, no leftovers.
    with pytest.raises(EvidenceIOError):
        TsmReportProvider(tmp_path).get_quote(bytes(64))
    assert list(tmp_path.iterdir()) == []


# -- simulated TEE and the registry ---------------------------------------------------------------


def test_sim_provider(sim_key: tuple[Path, Path], caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    from teeserve.attest.evidence import _sim

    monkeypatch.setattr(_sim, "_warned", False)
    provider = SimProvider(sim_key[0], config=b"model-config")
    assert provider.mr_enclave == sim.code_measurement(b"model-config")
    with caplog.at_level(logging.WARNING, logger="teeserve.attest.evidence"):
        q1 = provider.get_quote(b"\x05" * 64)
        q2 = provider.get_quote(b"\x06" * 64)
    simulated = [r for r in caplog.records if "SIMULATED" in r.getMessage()]
    assert len(simulated) == 1
    verified = sim.verify_quote(q1, [sim.load_public_key(sim_key[1])])
    assert verified.simulated and verified.report_data == b"\x05" * 64
    assert verified.sgx is not None and verified.sgx.mr_enclave == provider.mr_enclave
    assert q2[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64] == b"\x06" * 64
    explicit = SimProvider(sim_key[0], mr_enclave=b"\x33" * 32, isv_prod_id=7, isv_svn=3)
    body = sim.verify_quote(explicit.get_quote(bytes(64)), [sim.load_public_key(sim_key[1])]).sgx
    assert body is not None and body.mr_enclave == b"\x33" * 32
    assert (body.isv_prod_id, body.isv_svn) == (7, 3)


def test_get_provider(sim_key: tuple[Path, Path], tmp_path: Path) -> None:
    assert isinstance(get_provider("gramine", root=tmp_path), GramineProvider)
    assert isinstance(get_provider("tdx", root=tmp_path), TsmReportProvider)
    sim_provider = get_provider("sim", key_path=sim_key[0], mr_enclave=bytes(32))
    assert isinstance(sim_provider, SimProvider) and sim_provider.kind == "sim"
    assert isinstance(sim_provider, evidence.EvidenceProvider)
    with pytest.raises(UsageError, match="unknown TEE 'sgx'"):
        get_provider("sgx")
    with pytest.raises(UsageError, match="gramine"):
        get_provider("gramine", bogus=1)


def test_exports() -> None:
    public = {n for n in dir(evidence) if not n.startswith("_")} - {"annotations"}
    assert set(evidence.__all__) == public
