"""Helpers for the protected-files tests: the pf-crypt vector manifest and a fixed random source."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

PF_VECTORS = Path(__file__).parent.parent / "vectors" / "pf"
MANIFEST: list[dict[str, Any]] = json.loads((PF_VECTORS / "manifest.json").read_text())
VALID = [e for e in MANIFEST if e["valid"]]
NEGATIVE = [e for e in MANIFEST if not e["valid"]]


def plaintext_of(entry: dict[str, Any]) -> bytes:
    """The plaintext a vector decrypts to (see tests/vectors/pf/README.md)."""
    return random.Random(entry["seed"]).randbytes(entry["size"])


def fixed_rand(stream: bytes) -> Callable[[int], bytes]:
    """A ``rand`` for the writer that hands out ``stream`` in order and fails when it runs dry."""
    src = io.BytesIO(stream)

    def rand(n: int) -> bytes:
        out = src.read(n)
        assert len(out) == n, "the writer drew more random bytes than the test supplied"
        return out

    return rand
