"""Shared fixtures. Test data lives in tests/vectors/ (copied from shared/vectors with provenance)."""

from __future__ import annotations

from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS
