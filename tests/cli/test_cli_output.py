"""``teeserve.cli._output``: result lines that hold file names, on strict and permissive streams."""

from __future__ import annotations

import io
import os

import pytest

from teeserve.cli._output import echo, escaped


def stream(encoding: str, errors: str) -> tuple[io.TextIOWrapper, io.BytesIO]:
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors, write_through=True), raw


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("utf-8", b"out/f\\xff.bin\tbound to /m/f\\xff.bin\n"),
     ("ascii", b"out/f\\xff.bin\tbound to /m/f\\xff.bin\n"),
     ("latin-1", b"out/f\xff.bin\tbound to /m/f\xff.bin\n")],  # 0xff is a Latin-1 letter: shown as it is
)
def test_a_strict_stream_gets_the_undecodable_bytes_escaped(encoding: str, expected: bytes) -> None:
    name = os.fsdecode(b"f\xff.bin")
    out, raw = stream(encoding, "strict")
    echo(f"out/{name}\tbound to /m/{name}", out)
    assert raw.getvalue() == expected


def test_a_permissive_stream_gets_the_names_own_bytes() -> None:
    name = os.fsdecode(b"f\xff.bin")
    out, raw = stream("utf-8", "surrogateescape")
    echo(f"dec/{name}\tstored path é", out)
    assert raw.getvalue() == "dec/f\udcff.bin\tstored path é\n".encode("utf-8", "surrogateescape")


def test_a_valid_name_an_ascii_stream_cannot_carry_shows_its_bytes() -> None:
    out, raw = stream("ascii", "strict")
    echo("wrote model-é.bin", out)
    assert raw.getvalue() == b"wrote model-\\xc3\\xa9.bin\n"


def test_text_that_is_no_file_name_still_prints() -> None:
    """A lone surrogate that surrogateescape cannot turn back into a byte is escaped as a code point."""
    assert escaped("x\ud800y", "utf-8") == "x\\ud800y"
    out, raw = stream("utf-8", "strict")
    echo("x\ud800y", out)
    assert raw.getvalue() == b"x\\ud800y\n"
