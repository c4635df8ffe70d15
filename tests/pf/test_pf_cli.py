"""The ``teeserve keys`` / ``encrypt`` / ``decrypt`` commands and the tree recipes, through cli.main."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from teeserve import pf
from teeserve.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def key(work: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, _, _ = run(capsys, "keys", "new", "-o", "wrap_key")
    assert code == 0
    return work / "wrap_key"


def make_saved_model(root: Path) -> dict[str, bytes]:
    """A SavedModel-shaped tree: saved_model.pb, variables/ with two shards, empty assets/."""
    rng = random.Random(7)
    files = {
        "saved_model.pb": rng.randbytes(5000),
        "variables/variables.index": rng.randbytes(300),
        "variables/variables.data-00000-of-00001": rng.randbytes(3072 + 97 * 4096 + 11),
        "fingerprint.pb": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "assets").mkdir()
    return files


def test_keys_new_mode_force_and_hex(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "new", "-o", "k")
    assert code == 0 and "mode 0600" in out
    first = (work / "k").read_bytes()
    assert len(first) == 16 and (work / "k").stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, "keys", "new", "-o", "k")
    assert code == 1 and "k: already exists" in err and "--force" in err
    assert (work / "k").read_bytes() == first
    assert run(capsys, "keys", "new", "-o", "k", "--force")[0] == 0
    assert (work / "k").read_bytes() != first
    assert run(capsys, "keys", "new", "-o", "k.hex", "--hex")[0] == 0
    text = (work / "k.hex").read_text()
    assert len(text) == 33 and text.endswith("\n") and bytes.fromhex(text.strip())
    assert (work / "k.hex").stat().st_mode & 0o777 == 0o600
    assert run(capsys, "keys", "convert", "-i", "k.hex", "-o", "k.raw", "--to", "raw")[0] == 0
    assert (work / "k.raw").read_bytes() == bytes.fromhex(text.strip())
    assert (work / "k.raw").stat().st_mode & 0o777 == 0o600


def test_encrypt_decrypt_file_prints_the_bound_path(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(20000)
    (work / "model.onnx").write_bytes(data)
    code, out, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "model.onnx", "-o", "./enc//model.onnx")
    assert code == 0 and err == ""
    assert out.strip() == "./enc//model.onnx\tbound to enc/model.onnx"
    with pf.open_reader(work / "enc" / "model.onnx", key.read_bytes()) as r:
        assert r.stored_path == "enc/model.onnx" and r.format_version == 1
    code, out, _ = run(
        capsys, "decrypt", "-w", "wrap_key", "-i", "enc/model.onnx", "-o", "plain", "--verify-path"
    )
    assert code == 0 and "verified" in out
    assert (work / "plain").read_bytes() == data
    assert (work / "plain").stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "model.onnx", "-o", "enc/model.onnx")
    assert code == 1 and "already exists" in err
    argv = ["encrypt", "-w", "wrap_key", "-i", "model.onnx", "-o", "enc/model.onnx", "--force"]
    assert run(capsys, *argv)[0] == 0


def test_host_prefix_and_format_version_2(work: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "m.bin").write_bytes(b"weights" * 1000)
    code, out, _ = run(
        capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "out/m.bin",
        "--host-prefix", "/srv/models/./x/..", "--format-version", "2",
    )
    assert code == 0 and out.strip() == "out/m.bin\tbound to /srv/models/m.bin"
    assert (work / "out" / "m.bin").read_bytes()[8] == 2
    # --verify-path compares with the -i path, which is not where the file will be mounted
    code, _, err = run(capsys, "decrypt", "-w", "wrap_key", "-i", "out/m.bin", "-o", "p", "--verify-path")
    assert code == 1 and "'/srv/models/m.bin'" in err and "'out/m.bin'" in err
    assert not (work / "p").exists()
    code, _, _ = run(
        capsys, "decrypt", "-w", "wrap_key", "-i", "out/m.bin", "-o", "p",
        "--expected-path", "/srv//models/m.bin",
    )
    assert code == 0 and (work / "p").read_bytes() == b"weights" * 1000


def test_failures_leave_no_output(work: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "m.bin").write_bytes(os.urandom(50000))
    assert run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "enc.bin")[0] == 0
    run(capsys, "keys", "new", "-o", "other_key")
    before = sorted(os.listdir(work))
    code, out, err = run(capsys, "decrypt", "-w", "other_key", "-i", "enc.bin", "-o", "dec.bin")
    assert code == 1 and out == ""
    assert err.startswith("teeserve: error: enc.bin: ") and "wrap key is wrong" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    tampered = bytearray((work / "enc.bin").read_bytes())
    tampered[5 * 4096 + 100] ^= 1
    (work / "bad.bin").write_bytes(tampered)
    code, _, err = run(capsys, "decrypt", "-w", "wrap_key", "-i", "bad.bin", "-o", "dec.bin")
    assert code == 1 and "physical node 5" in err and "data node #3" in err
    assert sorted(os.listdir(work)) == sorted([*before, "bad.bin"])  # no dec.bin, no temporary file
    code, _, err = run(capsys, "decrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "dec.bin")
    assert code == 1 and "not a Gramine protected file" in err
    v2 = bytearray(pf.encrypt_bytes(b"x", key.read_bytes(), "r.bin", format_version=2))
    v2[58] = 1
    (work / "r.bin").write_bytes(v2)
    code, _, err = run(capsys, "decrypt", "-w", "wrap_key", "-i", "r.bin", "-o", "dec.bin")
    assert code == 1 and "recovery" in err and not (work / "dec.bin").exists()


def test_bad_key_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "m.bin").write_bytes(b"x")
    (work / "bad_key").write_bytes(b"0123456789abcdef0123\n")
    code, _, err = run(capsys, "encrypt", "-w", "bad_key", "-i", "m.bin", "-o", "e.bin")
    assert code == 1 and "bad_key: not a wrap key" in err and "20 hex characters" in err
    assert "0123456789" not in err and not (work / "e.bin").exists()
    code, _, err = run(capsys, "encrypt", "-w", "nope", "-i", "m.bin", "-o", "e.bin")
    assert code == 1 and "nope: cannot read the wrap key" in err


def test_trees_round_trip(work: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = make_saved_model(work / "model" / "1")
    code, out, _ = run(capsys, "encrypt", "-w", "wrap_key", "-i", "model", "-o", "enc/model")
    assert code == 0
    for rel in files:
        assert f"enc/model/1/{rel}\tbound to enc/model/1/{rel}" in out.splitlines()
        assert pf.is_protected_file(work / "enc/model/1" / rel)
    assert (work / "enc/model/1/assets").is_dir()  # empty directories are mirrored too
    code, out, _ = run(capsys, "decrypt", "-w", "wrap_key", "-i", "enc/model", "-o", "dec", "--verify-path")
    assert code == 0
    for rel, data in files.items():
        assert (work / "dec/1" / rel).read_bytes() == data
        assert (work / "dec/1" / rel).stat().st_mode & 0o777 == 0o600
    # the tree was bound to enc/model: moved elsewhere, path verification fails, and all or nothing
    os.rename(work / "enc", work / "moved")
    code, _, err = run(
        capsys, "decrypt", "-w", "wrap_key", "-i", "moved/model", "-o", "dec2", "--verify-path"
    )
    assert code == 1 and "PathMismatch" not in err and "was expected" in err
    assert not (work / "dec2").exists()


def test_tree_with_host_prefix_and_refusals(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_saved_model(work / "m")
    code, out, _ = run(
        capsys, "encrypt", "-w", "wrap_key", "-i", "m", "-o", "e", "--host-prefix", "/models/demo/1"
    )
    assert code == 0
    assert "e/variables/variables.index\tbound to /models/demo/1/variables/variables.index" in out
    # refuses to overwrite any file, before writing anything
    (work / "m" / "new.txt").write_bytes(b"new")
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m", "-o", "e")
    assert code == 1 and "already exists" in err and not (work / "e" / "new.txt").exists()
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m", "-o", "m/inside")
    assert code == 1 and "must not be inside" in err


def test_tree_failure_removes_what_it_created(work: Path, key: Path) -> None:
    k = key.read_bytes()
    src = work / "enc"
    make_saved_model(work / "plain")
    pf.encrypt_tree(work / "plain", src, k)
    victim = src / "variables" / "variables.index"  # sorted last: the files before it are written first
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 1
    victim.write_bytes(blob)
    with pytest.raises(pf.WrongKeyOrCorruptMetadata):
        pf.decrypt_tree(src, work / "out", k)
    assert not (work / "out").exists()


def test_encrypt_tree_api(work: Path, key: Path) -> None:
    files = make_saved_model(work / "sm")
    written = pf.encrypt_tree(work / "sm", "enc", key.read_bytes(), format_version=2)
    assert [w[1] for w in written] == sorted(f"enc/{rel}" for rel in files)
    for out, bound in written:
        with pf.open_reader(out, key.read_bytes(), expected_path=bound) as r:
            assert r.read_all() == files[bound[len("enc/"):]] and r.format_version == 2


def test_progress_bar_only_on_a_terminal(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "m.bin").write_bytes(os.urandom(3072 + 200 * 4096))
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "a.bin")
    assert code == 0 and err == ""  # not a terminal: no bar
    monkeypatch.setattr(type(__import__("sys").stderr), "isatty", lambda self: True, raising=False)
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "b.bin")
    assert code == 0 and "encrypt:" in err and "803k" in err  # tqdm, sized in bytes


def test_input_must_be_a_regular_file(work: Path, key: Path) -> None:
    with pytest.raises(pf.ProtectedFileError, match="not a regular file"):
        pf.encrypt_file("/dev/null", work / "x", key.read_bytes())
    with pytest.raises(pf.ProtectedFileError, match="cannot read"):
        pf.encrypt_file(work / "missing", work / "x", key.read_bytes())
    assert not (work / "x").exists()


def test_unwritable_output_is_a_clean_error(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "m.bin").write_bytes(b"x")
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "/proc/no/such/dir/e.bin")
    assert code == 1 and err.startswith("teeserve: error: m.bin -> /proc/no/such/dir/e.bin: failed:")


@pytest.mark.timeout(60)  # (as root the unreadable input is a FIFO, which must be refused, not opened)
@pytest.mark.parametrize("direction", ["decrypt", "encrypt"])
def test_a_failed_tree_with_force_leaves_existing_outputs_untouched(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str], direction: str
) -> None:
    """All or nothing also over an existing output tree (--force): a file that fails (here the last
    one in sorted order) means no file of the old tree is replaced."""
    k = key.read_bytes()
    make_saved_model(work / "plain")
    pf.encrypt_tree(work / "plain", work / "enc", k)
    if direction == "decrypt":
        victim = work / "enc" / "variables" / "variables.index"  # sorted last
        blob = bytearray(victim.read_bytes())
        blob[100] ^= 1  # found when this file is opened, after the files before it were written
        victim.write_bytes(blob)
        source = "enc"
    else:
        (work / "plain" / "variables" / "variables.index").chmod(0o000)
        if os.access(work / "plain" / "variables" / "variables.index", os.R_OK):
            (work / "plain" / "variables" / "variables.index").unlink()  # root reads anything: use a FIFO
            os.mkfifo(work / "plain" / "variables" / "variables.index")
        source = "plain"
    out = work / "out"
    (out / "variables").mkdir(parents=True)
    old = {rel: f"old {rel}".encode() for rel in ("saved_model.pb", "fingerprint.pb", "variables/variables.index")}
    for rel, data in old.items():
        (out / rel).write_bytes(data)
    code, _, err = run(capsys, direction, "-w", "wrap_key", "-i", source, "-o", "out", "--force")
    assert code == 1 and "variables.index" in err, err
    assert {rel: (out / rel).read_bytes() for rel in old} == old
    assert sorted(p.name for p in out.rglob("*")) == sorted(["variables", *(Path(r).name for r in old)])


def test_force_never_replaces_a_link_device_or_directory(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "m.bin").write_bytes(b"model")
    (work / "real").write_bytes(b"keep")
    os.symlink(work / "real", work / "link")
    (work / "adir").mkdir()
    os.mkfifo(work / "fifo")  # stands in for a device (never /dev/null itself: a regression would clobber it)
    for target in ("link", "adir", "fifo"):
        code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", target, "--force")
        assert code == 1 and "is not a regular file" in err, (target, err)
        code, _, err = run(capsys, "keys", "new", "-o", target, "--force")
        assert code == 1 and "is not a regular file" in err, (target, err)
    assert os.path.islink(work / "link") and (work / "real").read_bytes() == b"keep"
    assert (work / "adir").is_dir() and (work / "fifo").is_fifo()
    assert not [p for p in work.iterdir() if p.name.endswith(".part")]


@pytest.mark.timeout(60)  # opening the FIFO for reading would wait for a writer forever
def test_pipes_and_fifos_are_refused_not_read(work: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(work / "fifo")  # opening it would wait for a writer
    for command in ("encrypt", "decrypt"):
        code, _, err = run(capsys, command, "-w", "wrap_key", "-i", "fifo", "-o", "out")
        assert code == 1 and "fifo: is not a regular file" in err, err
    r, w = os.pipe()
    try:
        code, _, err = run(capsys, "decrypt", "-w", "wrap_key", "-i", f"/dev/fd/{r}", "-o", "out")
        assert code == 1 and "is not a regular file" in err, err
    finally:
        os.close(r)
        os.close(w)
    assert not (work / "out").exists()


def test_operating_system_errors_are_errors_not_bugs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "afile").write_bytes(b"x")
    code, _, err = run(capsys, "keys", "new", "-o", "afile/key")
    assert code == 1 and err.startswith("teeserve: error: ") and "internal error" not in err, err
    code, _, err = run(capsys, "keys", "new", "-o", "n" * 300)
    assert code == 1 and "File name too long" in err and "internal error" not in err, err


def test_a_large_key_file_is_described_by_its_size(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "big").write_bytes(os.urandom(1000))
    (work / "m.bin").write_bytes(b"x")
    code, _, err = run(capsys, "encrypt", "-w", "big", "-i", "m.bin", "-o", "e.bin")
    assert code == 1 and "found a file of 1000 bytes" in err, err


def test_sigterm_during_decrypt_leaves_no_plaintext(work: Path, key: Path) -> None:
    """SIGTERM (timeout, kill, systemd, a cancelled CI job) must clean up like Ctrl-C: the temporary
    output of a decrypt holds plaintext. The copy is slowed down so that the signal lands mid-write."""
    import signal
    import subprocess
    import sys
    import time

    (work / "m.bin").write_bytes(os.urandom(3072 + 20 * 4096))
    pf.encrypt_file(work / "m.bin", work / "e.bin", key.read_bytes())
    script = (
        "import sys, time\n"
        "from teeserve.pf import _file\n"
        "def slow(self, out, progress=None):\n"
        "    out.write(b'plaintext' * 1000); out.flush(); time.sleep(60)\n"
        "_file.Reader.copy_to = slow\n"
        "from teeserve.cli import main\n"
        "sys.exit(main(['decrypt', '-w', 'wrap_key', '-i', 'e.bin', '-o', 'plain.out']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=work, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in work.iterdir() if p.name.endswith(".part")]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert not [p for p in work.iterdir() if p.name.endswith(".part") or p.name == "plain.out"]


def test_main_restores_the_signal_handlers_it_set(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() may be called by a program that goes on: SIGTERM/SIGHUP are its own again afterwards."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    assert run(capsys, "keys", "new", "-o", "k")[0] == 0
    assert run(capsys, "keys", "new", "-o", "k")[0] == 1  # an error path too
    assert {sig: signal.getsignal(sig) for sig in before} == before


def cli(
    work: Path, *argv: str | bytes, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``python -m teeserve ARGV`` in ``work``, as a user runs it (bytes argv for non-UTF-8 names);
    ``env`` sets variables over this one's, or unsets those given as None."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "teeserve", *argv], cwd=work, capture_output=True, timeout=120,
        env={name: value for name, value in environ.items() if value is not None},
    )


def test_an_empty_host_prefix_is_a_usage_error(work: Path, key: Path) -> None:
    """An empty --host-prefix (an unset shell variable) bound every file to /NAME, under the root."""
    (work / "m.bin").write_bytes(b"model")
    make_saved_model(work / "tree")
    for src, out in (("m.bin", "e.bin"), ("tree", "enc")):
        proc = cli(work, "encrypt", "-w", "wrap_key", "-i", src, "-o", out, "--host-prefix", "")
        err = proc.stderr.decode()
        assert proc.returncode == 2 and proc.stdout == b"", err
        assert err.startswith("teeserve: error: --host-prefix: empty") and "root directory" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (work / out).exists()
    with pytest.raises(ValueError, match="host_prefix must not be empty"):
        pf.encrypt_tree(work / "tree", work / "enc", key.read_bytes(), host_prefix="")
    assert not (work / "enc").exists()
    # a relative prefix is not refused: it stays relative, for a mount whose uri is relative
    proc = cli(work, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "e.bin", "--host-prefix", "./enc/")
    assert proc.returncode == 0 and proc.stdout == b"e.bin\tbound to enc/e.bin\n", proc.stderr


def test_an_empty_expected_path_is_a_usage_error(work: Path, key: Path) -> None:
    """An empty --expected-path (an unset shell variable) was reported as a path mismatch, exit 1."""
    (work / "m.bin").write_bytes(b"model")
    assert cli(work, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "e.bin").returncode == 0
    for value in ("", ".", "a/.."):
        proc = cli(work, "decrypt", "-w", "wrap_key", "-i", "e.bin", "-o", "d.bin", "--expected-path", value)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and proc.stdout == b"", err
        assert err.startswith(f"teeserve: error: --expected-path: {value!r} names no file"), err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not (work / "d.bin").exists()
    proc = cli(work, "decrypt", "-w", "wrap_key", "-i", "e.bin", "-o", "d.bin", "--expected-path", "./e.bin")
    assert proc.returncode == 0 and (work / "d.bin").read_bytes() == b"model", proc.stderr


def _tamper_last(enc: Path) -> None:
    """Corrupt the tree's file that sorts last, so the run fails after writing the others."""
    victim = enc / "variables" / "variables.index"
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 1
    victim.write_bytes(blob)


@pytest.mark.parametrize("direction", ["decrypt", "encrypt"])
def test_a_failed_tree_into_new_nested_directories_removes_them(
    work: Path, key: Path, direction: str
) -> None:
    """The output's last directory cannot be made (its name is too long) after its parents were:
    those parents, made by this run, go too; the user's directory and file above them stay."""
    make_saved_model(work / "plain")
    pf.encrypt_tree(work / "plain", work / "enc", key.read_bytes())
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_bytes(b"keep")
    out = "mine/new/nested/" + "n" * 300
    extra = ["--host-prefix", "/models"] if direction == "encrypt" else []  # short bound paths
    source = "enc" if direction == "decrypt" else "plain"
    proc = cli(work, direction, "-w", "wrap_key", "-i", source, "-o", out, *extra)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "File name too long" in err and "Traceback" not in err, err
    assert sorted(os.listdir(work / "mine")) == ["notes.txt"]
    assert (work / "mine" / "notes.txt").read_bytes() == b"keep"


@pytest.mark.timeout(60)  # (the encrypt case's FIFO must be refused, not opened)
@pytest.mark.parametrize("direction", ["decrypt", "encrypt"])
def test_a_failed_tree_never_removes_a_directory_it_did_not_make(
    work: Path, key: Path, direction: str
) -> None:
    """``gone/../kept/out`` names the existing (empty) ``kept`` through a directory that does not
    exist yet: the run makes ``gone`` and ``kept/out`` and, when it fails, removes those two only."""
    make_saved_model(work / "plain")
    pf.encrypt_tree(work / "plain", work / "enc", key.read_bytes())
    if direction == "decrypt":
        _tamper_last(work / "enc")
    else:
        (work / "plain" / "variables" / "variables.index").unlink()
        os.mkfifo(work / "plain" / "variables" / "variables.index")  # refused when its turn comes
    (work / "kept").mkdir()
    source = "enc" if direction == "decrypt" else "plain"
    proc = cli(work, direction, "-w", "wrap_key", "-i", source, "-o", "gone/../kept/out")
    assert proc.returncode == 1 and b"variables.index" in proc.stderr, proc.stderr
    assert (work / "kept").is_dir() and os.listdir(work / "kept") == []
    assert not (work / "gone").exists()


def test_a_failed_file_into_new_nested_directories_removes_them(work: Path, key: Path) -> None:
    """One file, too: a decrypt that fails mid-file (a tampered data node) or an encrypt whose output
    cannot be created leaves no directory it made for its output."""
    (work / "m.bin").write_bytes(os.urandom(3072 + 10 * 4096))
    pf.encrypt_file(work / "m.bin", work / "e.bin", key.read_bytes())
    blob = bytearray((work / "e.bin").read_bytes())
    blob[5 * 4096 + 100] ^= 1  # found after the first data nodes were written out
    (work / "bad.bin").write_bytes(blob)
    proc = cli(work, "decrypt", "-w", "wrap_key", "-i", "bad.bin", "-o", "new/nested/plain")
    assert proc.returncode == 1 and b"physical node 5" in proc.stderr, proc.stderr
    assert not (work / "new").exists()
    proc = cli(work, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", "new/nested/" + "n" * 300,
               "--host-prefix", "/models")
    assert proc.returncode == 1 and b"File name too long" in proc.stderr, proc.stderr
    assert not (work / "new").exists()
    assert pf.decrypt_file(work / "e.bin", work / "new" / "nested" / "plain", key.read_bytes()) is None
    assert (work / "new" / "nested" / "plain").read_bytes() == (work / "m.bin").read_bytes()  # made, kept


@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii:strict"])
def test_a_non_utf8_file_name_prints_escaped_on_a_strict_stdout(work: Path, key: Path, encoding: str) -> None:
    """A file name with byte 0xff cannot be encoded by a strict stdout: the result lines show it as
    ``\\xff`` and the command succeeds (it used to end in an internal error after writing the files)."""
    os.mkdir(b"plain")
    with open(b"plain/f\xff.bin", "wb") as fh:
        fh.write(b"weights")
    env = {"PYTHONIOENCODING": encoding}
    runs = [
        (["encrypt", "-w", "wrap_key", "-i", b"plain/f\xff.bin", "-o", b"e\xff.bin"],
         b"e\\xff.bin\tbound to e\\xff.bin\n"),
        (["decrypt", "-w", "wrap_key", "-i", b"e\xff.bin", "-o", b"d\xff", "--verify-path"],
         b"d\\xff\tdecrypted from e\\xff.bin (path e\\xff.bin verified)\n"),
        (["encrypt", "-w", "wrap_key", "-i", "plain", "-o", "enc"],
         b"enc/f\\xff.bin\tbound to enc/f\\xff.bin\nencrypted 1 files into enc (format version 1)\n"),
        (["decrypt", "-w", "wrap_key", "-i", "enc", "-o", "dec"],
         b"dec/f\\xff.bin\tstored path enc/f\\xff.bin\ndecrypted 1 files into dec\n"),
        (["keys", "new", "-o", b"k\xff"], b"wrote a new raw 16-byte wrap key to k\\xff (mode 0600)\n"),
    ]
    for argv, expected in runs:
        proc = cli(work, *argv, env=env)
        assert (proc.returncode, proc.stderr, proc.stdout) == (0, b"", expected), argv
    assert open(b"d\xff", "rb").read() == b"weights"
    assert open(b"dec/f\xff.bin", "rb").read() == b"weights"


def test_a_non_utf8_file_name_keeps_its_bytes_where_stdout_takes_them(work: Path, key: Path) -> None:
    """Under a UTF-8 or C locale Python's stdout writes a name's undecodable bytes as they are
    (surrogateescape): the line then names the real file, for scripts, and is not escaped."""
    os.mkdir(b"plain")
    with open(b"plain/f\xff.bin", "wb") as fh:
        fh.write(b"weights")
    proc = cli(work, "encrypt", "-w", "wrap_key", "-i", "plain", "-o", "enc",
               env={"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": None})
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert proc.stdout.splitlines()[0] == b"enc/f\xff.bin\tbound to enc/f\xff.bin"


def test_a_directory_that_cannot_be_listed_fails_the_tree_run(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.walk skips such a directory by default: the run would succeed with the variables left out.
    # (The tests run as root, for whom mode 000 does not stop a listing, so the refusal is injected.)
    make_saved_model(work / "model")
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if os.fspath(path).endswith("variables"):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    code, out, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "model", "-o", "enc")
    assert code == 1 and out == ""
    assert "model/variables" in err and "cannot list: Permission denied" in err and "Traceback" not in err
    assert not (work / "enc").exists()


@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_a_link_to_a_directory_inside_a_tree_is_refused(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str], direction: str
) -> None:
    """os.walk does not descend into a linked directory: the run succeeded with variables/ left out.
    Such a link is refused before anything is written; a link to a file is still read through."""
    files = make_saved_model(work / "plain")
    (work / "outside.bin").write_bytes(b"linked file")
    (work / "plain" / "linked.bin").symlink_to(work / "outside.bin")
    pf.encrypt_tree(work / "plain", work / "enc", key.read_bytes())
    source = "plain" if direction == "encrypt" else "enc"
    os.rename(work / source / "variables", work / "elsewhere")
    (work / source / "variables").symlink_to(work / "elsewhere", target_is_directory=True)
    code, out, err = run(capsys, direction, "-w", "wrap_key", "-i", source, "-o", "out")
    assert code == 1 and out == "" and "Traceback" not in err, err
    assert err == (f"teeserve: error: {source}/variables: is a symbolic link to a directory, which a tree "
                   "run does not follow (it may lead outside the tree); replace it with the directory itself "
                   "(cp -rL)\n")
    assert not (work / "out").exists()
    (work / source / "variables").unlink()
    os.rename(work / "elsewhere", work / source / "variables")
    assert run(capsys, direction, "-w", "wrap_key", "-i", source, "-o", "out")[0] == 0
    if direction == "encrypt":
        with pf.open_reader(work / "out" / "linked.bin", key.read_bytes()) as r:
            assert r.read_all() == b"linked file"
    else:
        assert (work / "out" / "linked.bin").read_bytes() == b"linked file"
        assert all((work / "out" / rel).read_bytes() == data for rel, data in files.items())


def test_an_empty_input_or_output_is_refused(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty -o (an unset shell variable) on a tree bound every file to /relpath and wrote the files
    into the current directory, exit 0; the library refuses an empty path too."""
    (work / "m.bin").write_bytes(b"model")
    make_saved_model(work / "tree")
    k = key.read_bytes()
    pf.encrypt_tree(work / "tree", work / "enc", k)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for command, source in (("encrypt", "tree"), ("encrypt", "m.bin"), ("decrypt", "enc")):
        for flag, argv in (("-o/--output", ["-i", source, "-o", ""]), ("-i/--input", ["-i", "", "-o", "x"]),
                           ("-w/--wrap-key", ["-i", source, "-o", "x", "-w", ""])):
            code, out, err = run(capsys, command, "-w", "wrap_key", *argv)
            assert code == 2 and out == "" and err.startswith(f"teeserve: error: {flag}: empty; give "), err
            assert err.count("\n") == 1
    for name, call in (
        ("dst_dir", lambda: pf.encrypt_tree(work / "tree", "", k)),
        ("dst_dir", lambda: pf.decrypt_tree(work / "enc", "", k)),
        ("src_dir", lambda: pf.encrypt_tree("", work / "out", k)),
        ("src_dir", lambda: pf.decrypt_tree("", work / "out", k)),
        ("dst", lambda: pf.encrypt_file(work / "m.bin", "", k)),
        ("dst", lambda: pf.decrypt_file(work / "enc" / "saved_model.pb", "", k)),
    ):
        with pytest.raises(ValueError, match=f"^{name} must not be empty$"):
            call()
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_output_errors_name_the_path_at_fault(
    work: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`-o .` was "the path to bind is empty"; a file where the tree has a directory was "d -> o:
    failed: Not a directory", without saying which path."""
    (work / "m.bin").write_bytes(b"model")
    for out in (".", "gone/.."):
        code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "m.bin", "-o", out)
        assert code == 1 and err == f"teeserve: error: {out}: names a directory (the current one), not the " \
            "file to write; give the protected file's path\n", err
    make_saved_model(work / "tree")
    (work / "out").mkdir()
    (work / "out" / "variables").write_bytes(b"mine")
    code, _, err = run(capsys, "encrypt", "-w", "wrap_key", "-i", "tree", "-o", "out")
    assert code == 1 and err == "teeserve: error: tree -> out: failed: out/variables: Not a directory\n", err
    assert sorted(os.listdir(work / "out")) == ["variables"]
    assert (work / "out" / "variables").read_bytes() == b"mine"


@pytest.mark.timeout(60)  # the old sniff opened the FIFO and waited for a writer forever
def test_is_protected_file_never_opens_what_is_not_a_regular_file(work: Path, key: Path) -> None:
    os.mkfifo(work / "fifo")
    assert not pf.is_protected_file(work / "fifo")
    assert not pf.is_protected_file("/dev/zero") and not pf.is_protected_file(work)
    (work / "m.bin").write_bytes(b"model")
    pf.encrypt_file(work / "m.bin", work / "e.bin", key.read_bytes())
    (work / "link").symlink_to(work / "e.bin")
    assert pf.is_protected_file(work / "e.bin") and pf.is_protected_file(work / "link")


def test_a_staged_commit_that_fails_part_way_puts_the_old_files_back(tmp_path: Path) -> None:
    """A tree's outputs replace their targets all or nothing: here the third replacement fails (its
    staged file was removed), after two targets were already replaced; those get their old content
    back, a new target is removed again, and no temporary or set-aside file is left."""
    from teeserve._io import Staging, atomic_output

    names = ["a", "new", "b", "c"]
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(f"old {name}".encode())
    stage = Staging()
    for name in names:
        with atomic_output(tmp_path / name, stage=stage) as fh:
            fh.write(f"new {name}".encode())
    staged = {p for p in tmp_path.iterdir() if p.name.endswith(".part")}
    (next(p for p in staged if p.name.startswith(".b.")).unlink())
    with pytest.raises(FileNotFoundError) as err:
        stage.commit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {n: f"old {n}".encode() for n in "abc"}
    assert err.value.filename == os.fspath(tmp_path / "b")  # the target, not its temporary file

    stage = Staging()
    for name in names:
        with atomic_output(tmp_path / name, stage=stage) as fh:
            fh.write(f"new {name}".encode())
    stage.commit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {n: f"new {n}".encode() for n in names}
