"""Fixtures for the deployment tests (helpers without fixtures are in ``_deploy_helpers``): a laid-out
``/dev/attestation`` tree whose ``quote`` behaves like Gramine's (a FIFO answered with a SIMULATED quote
over whatever was last written to ``user_report_data``), and the simulated TEE's key.

    sim_key(tmp_path_factory)               (private PEM path, public key) of a simulated TEE
    attestation_tree(tmp_path, sim_key)     AttestationTree: .root, .mr_enclave, .key_file(name), .quotes
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """CLI commands run in-process configure the ``teeserve`` loggers for the current stderr; put them
    back so a later test's captured stream is not written to after it closed."""
    import logging

    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate, logging.getLogger(n).level)
             for n in ("teeserve", "grpc")}
    yield
    for n, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(level)


@pytest.fixture(scope="session")
def sim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from teeserve.attest import sim

    d = tmp_path_factory.mktemp("sim")
    key, pub = sim.init_key(d)
    return key, sim.load_public_key(pub)


@dataclass
class AttestationTree:
    """A directory laid out like Gramine's /dev/attestation (§3.7) with a live ``quote`` FIFO."""

    root: Path
    mr_enclave: bytes
    quotes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def key_file(self, name: str = "default") -> Path:
        return self.root / "keys" / name


def _serve_quotes(tree: AttestationTree, signing_key: Any) -> None:
    from teeserve.attest import sim

    quote_path = tree.root / "quote"
    while not tree._stop.is_set():
        try:
            fd = os.open(quote_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            tree._stop.wait(0.01)
            continue
        try:
            os.set_blocking(fd, True)
            report_data = (tree.root / "user_report_data").read_bytes()[:64]
            quote = sim.make_quote(signing_key, report_data, mr_enclave=tree.mr_enclave)
            view = memoryview(quote)
            while view:
                view = view[os.write(fd, view):]
            tree.quotes += 1
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)
        # let the reader see EOF and close before the next open can pair with it
        tree._stop.wait(0.05)


@pytest.fixture
def attestation_tree(tmp_path: Path, sim_key: tuple[Path, Any]):
    from teeserve.attest import sim

    root = tmp_path / "dev-attestation"
    (root / "keys").mkdir(parents=True)
    (root / "attestation_type").write_bytes(b"dcap")
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "target_info").write_bytes(bytes(512))
    (root / "my_target_info").write_bytes(bytes(512))
    (root / "keys" / "default").write_bytes(b"")
    (root / "keys" / "_sgx_mrenclave").write_bytes(os.urandom(16))
    (root / "keys" / "_sgx_mrsigner").write_bytes(os.urandom(16))
    os.mkfifo(root / "quote")
    tree = AttestationTree(root=root, mr_enclave=bytes(range(32)))
    tree._thread = threading.Thread(target=_serve_quotes, args=(tree, sim.load_signing_key(sim_key[0])),
                                    daemon=True)
    tree._thread.start()
    yield tree
    tree._stop.set()
    tree._thread.join(5)
