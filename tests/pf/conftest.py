"""Fixtures for the protected-files tests (helpers live in pf_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pf_vectors(vectors_dir: Path) -> Path:
    return vectors_dir / "pf"


@pytest.fixture(scope="session")
def vector_key(pf_vectors: Path) -> bytes:
    return (pf_vectors / "wrap_key").read_bytes()
