"""models/_layout.py's all-or-nothing installs (``make-demo``'s SavedModel, ONNX copy, samples and
frozen graph): real files in a temporary folder; a failure is provoked by a regular file standing where
a folder must be made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teeserve._io import OutputExists
from teeserve.models._layout import all_or_nothing


def staged_folder(root: Path, name: str, content: str) -> Path:
    d = root / ".stage" / name
    d.mkdir(parents=True)
    (d / "saved_model.pb").write_text(content)
    return d


def tree(root: Path) -> dict[str, str]:
    """relative path -> content of every file under ``root`` (hidden ones included)."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_output_goes_in_when_the_block_succeeds(tmp_path: Path) -> None:
    with all_or_nothing(force=False) as out:
        out.install(staged_folder(tmp_path, "sm", "new sm"), tmp_path / "m" / "digits" / "1")
        out.write(tmp_path / "g" / "frozen.pb", b"graph")
    assert (tmp_path / "m/digits/1/saved_model.pb").read_text() == "new sm"
    assert (tmp_path / "g/frozen.pb").read_bytes() == b"graph"
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".stage"]  # no set-aside or staged leftovers


def test_a_later_failure_removes_what_went_in_and_the_folders_made_for_it(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder must be made")
    before = tree(tmp_path)
    with pytest.raises(OSError), all_or_nothing(force=False) as out:
        out.install(staged_folder(tmp_path, "sm", "new sm"), tmp_path / "m" / "digits" / "1")
        out.write(tmp_path / "samples" / "a.png", b"png")
        out.write(tmp_path / "blocker" / "frozen.pb", b"graph")  # NotADirectoryError
    assert not (tmp_path / "m").exists() and not (tmp_path / "samples").exists()
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith(".stage")} == \
        {k: v for k, v in before.items() if not k.startswith(".stage")}


def test_a_failure_puts_back_what_force_replaced(tmp_path: Path) -> None:
    target = tmp_path / "m" / "digits" / "1"
    target.mkdir(parents=True)
    (target / "saved_model.pb").write_text("old sm")
    (tmp_path / "frozen.pb").write_text("old graph")
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OSError), all_or_nothing(force=True) as out:
        out.install(staged_folder(tmp_path, "sm", "new sm"), target)
        out.write(tmp_path / "frozen.pb", b"new graph")
        out.write(tmp_path / "blocker" / "x.pb", b"graph")
    assert (target / "saved_model.pb").read_text() == "old sm"
    assert (tmp_path / "frozen.pb").read_text() == "old graph"
    assert not [p for p in tmp_path.rglob(".*") if ".stage" not in str(p)]


def test_force_replaces_and_leaves_nothing_aside(tmp_path: Path) -> None:
    target = tmp_path / "digits" / "1"
    target.mkdir(parents=True)
    (target / "old-only").write_text("old")
    with all_or_nothing(force=True) as out:
        out.install(staged_folder(tmp_path, "sm", "new sm"), target)
    assert sorted(os.listdir(target)) == ["saved_model.pb"]
    assert sorted(os.listdir(tmp_path / "digits")) == ["1"]


def test_without_force_an_existing_output_is_refused_and_earlier_ones_taken_back(tmp_path: Path) -> None:
    (tmp_path / "frozen.pb").write_text("theirs")
    with pytest.raises(OutputExists), all_or_nothing(force=False) as out:
        out.install(staged_folder(tmp_path, "sm", "new sm"), tmp_path / "digits" / "1")
        out.write(tmp_path / "frozen.pb", b"graph")
    assert not (tmp_path / "digits").exists()
    assert (tmp_path / "frozen.pb").read_text() == "theirs"
    assert not list(tmp_path.glob(".frozen.pb*"))
