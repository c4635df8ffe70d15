"""models/_layout.py's all-or-nothing installs (``make-demo``'s SavedModel, ONNX copy, samples and
frozen graph): real files in a temporary folder; a failure is provoked by a regular file standing where
a folder must be made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from teeserve._errors import UsageError
from teeserve._io import OutputExists, OutputNotRegular
from teeserve.models import _layout
from teeserve.models._layout import all_or_nothing, output_error


def staged_folder(root: Path, name: str, content: str) -> Path:
    d = root / ".stage" / name
    d.mkdir(parents=True)
    (d / "saved_model.pb").write_text(content)
    return d


def tree(root: Path) -> dict[str, str]:
    """relative path -> content of every file under ``root``, and "/" for every folder (hidden ones
    included), so a folder removed or left behind shows too."""
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else "/" for p in sorted(root.rglob("*"))}


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


def test_force_never_replaces_a_folder_with_a_file(tmp_path: Path) -> None:
    """--frozen-graph-out (or a sample) naming a folder: refused even with force, the folder intact."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keep.txt").write_text("mine")
    with pytest.raises(OutputNotRegular), all_or_nothing(force=True) as out:
        out.write(tmp_path / "models", b"graph")
    assert tree(tmp_path) == {"models": "/", "models/keep.txt": "mine"}


def test_the_same_target_twice_is_refused_and_the_original_kept(tmp_path: Path) -> None:
    (tmp_path / "frozen.pb").write_text("original")
    with pytest.raises(ValueError, match="already an output"), all_or_nothing(force=True) as out:
        out.write(tmp_path / "frozen.pb", b"first")
        out.write(tmp_path / "frozen.pb", b"second")
    assert tree(tmp_path) == {"frozen.pb": "original"}


def test_a_leftover_aside_name_of_an_earlier_run_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / "frozen.pb").write_text("original")
    for pid_like in ("1", str(os.getpid())):  # what a killed run (its pid reused) could have left
        (tmp_path / f".frozen.pb.old-{pid_like}").write_text("leftover")
    (tmp_path / "blocker").write_text("a file where a folder must be")
    before = tree(tmp_path)
    with pytest.raises(OSError), all_or_nothing(force=True) as out:
        out.write(tmp_path / "frozen.pb", b"new")
        out.write(tmp_path / "blocker" / "x", b"")
    assert tree(tmp_path) == before


def test_what_cannot_be_put_back_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollback that cannot remove the new output (a removal the file system refuses, injected
    here: as root no permission bit stops it) and so cannot put the original back: it says where the
    original is kept, in the log and on the exception."""
    (tmp_path / "frozen.pb").write_text("original")
    said: list[str] = []

    def refused(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    with pytest.raises(RuntimeError) as info, all_or_nothing(force=True, log=said.append) as out:
        out.write(tmp_path / "frozen.pb", b"new")
        (tmp_path / "frozen.pb").unlink()  # its place taken by a folder that os.replace cannot overwrite
        (tmp_path / "frozen.pb").mkdir()
        (tmp_path / "frozen.pb" / "x").write_text("someone else's")
        monkeypatch.setattr(_layout, "_remove", refused)
        raise RuntimeError("a later step failed")
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith(".frozen.pb.old-")]
    assert kept.read_text() == "original"
    assert said == [f"could not remove {tmp_path / 'frozen.pb'} (Permission denied)",
                    f"could not put {tmp_path / 'frozen.pb'} back (Is a directory): it is kept as {kept}"]
    assert info.value.__notes__ == said


def test_output_error_names_the_target_not_the_staging_path(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(OSError) as info, all_or_nothing(force=False) as out:
        out.write(tmp_path / "blocker" / "frozen.pb", b"graph")
    err = output_error(info.value)
    assert isinstance(err, UsageError)
    assert str(err).startswith(f"cannot write the outputs: {tmp_path / 'blocker'}")
    assert "nothing was written" in str(err) and ".new-" not in str(err)
