"""What a real ``teeserve serve`` process writes to the file system: nothing.

The server of an encrypted ONNX model, and of an encrypted SavedModel, runs under ``strace -f`` (every
thread, every child), loads the model, answers gRPC and REST, drains on SIGTERM; the trace of every call
that opens, creates, renames, links or truncates a file is then read. Not one file may be opened for writing or created: the
plaintext model, the keys and the traffic can only reach the disk through such a call. This is the
system-call-level companion of ``test_core_encrypted.py`` (which scans the file system for plaintext
after an in-process load).

It also keeps ONNX Runtime's own telemetry off the host: ONNX Runtime 1.32 writes events (the model's
graph name, opsets, run timings per batch size, error texts) to
``~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db`` and uploads them when it can. A control
run of plain onnxruntime under the same trace shows that file being written, so the check can fail; a
second control shows what a plain ``import tensorflow`` writes (Keras's config, matplotlib's font cache),
which the SavedModel backend's import guard (``backends/_tf.py``) prevents.

Needs ``strace`` (a Debian package that ``scripts/bootstrap.sh`` installs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from test_server import digits_request, free_port, wait_serving  # the same folder's helpers

pytestmark = pytest.mark.slow

#: The calls that can put bytes into, or names onto, the file system.
TRACED = "open,openat,openat2,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,mkdir,mkdirat," \
         "mknod,mknodat,truncate,ftruncate,memfd_create"
_OPEN = re.compile(r'\b(open|openat|openat2|creat)\((?:[A-Z_]+,\s*|-?\d+,\s*)?"([^"]*)"(?:,\s*([A-Z_|]+|\{[^}]*\}))?')
_NAMING = re.compile(r"\b(rename|renameat|renameat2|link|linkat|symlink|symlinkat|mkdir|mkdirat|mknod|mknodat|"
                     r"truncate|ftruncate|memfd_create)\(")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
#: Opened read-write by a process without writing a byte to any file (a character device).
_ALLOWED = {"/dev/null"}
#: A thread's name in procfs (TensorFlow names its threads with pthread_setname_np): no file system.
_THREAD_NAME = re.compile(r"/proc/self/task/\d+/comm")


def writes_in(trace: str) -> list[str]:
    """The traced calls that open a file for writing, create one, or name / resize one. A call that
    another thread interrupted shows its arguments on its first line (``<unfinished ...>``) and only
    its result on a ``<... resumed>`` line, which matches neither pattern."""
    found = []
    for line in trace.splitlines():
        m = _OPEN.search(line)
        if m:
            call, path, flags = m.group(1), m.group(2), m.group(3) or ""
            if path not in _ALLOWED and not _THREAD_NAME.fullmatch(path) and \
                    (call == "creat" or any(f in flags for f in _WRITE_FLAGS)):
                found.append(line.strip())
        elif _NAMING.search(line):
            found.append(line.strip())
    return found


def test_writes_in_reads_strace_lines() -> None:
    trace = "\n".join([
        '101 openat(AT_FDCWD, "/srv/m/1/model.onnx", O_RDONLY|O_CLOEXEC) = 7',
        '101 openat(AT_FDCWD, "/dev/null", O_RDWR|O_CLOEXEC) = 8',
        '102 openat(AT_FDCWD, "/root/.cache/x.db", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644 <unfinished ...>',
        "102 <... openat resumed>) = 9",
        '103 creat("/tmp/out", 0600) = 10',
        '104 openat2(AT_FDCWD, "/tmp/y", {flags=O_WRONLY|O_CREAT, mode=0600}, 24) = 11',
        '105 mkdir("/tmp/d", 0777) = 0',
        '106 open("/etc/hosts", O_RDONLY) = 12',
        '107 rename("/tmp/a", "/tmp/b") = 0',
        "108 memfd_create(\"weights\", MFD_CLOEXEC) = 13",
        '109 openat(AT_FDCWD, "/proc/self/task/4242/comm", O_RDWR) = 14',
        '110 openat(AT_FDCWD, "/proc/self/task/4242/environ", O_RDWR) = 15',
    ])
    assert [w.split()[0] for w in writes_in(trace)] == ["102", "103", "104", "105", "107", "108", "110"]


@pytest.fixture(scope="module")
def strace() -> str:
    path = shutil.which("strace")
    assert path, "strace is not installed: scripts/bootstrap.sh installs it (Debian package strace)"
    return path


def _traced(strace: str, log: Path, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``argv`` under strace; its output goes to ``<log>.out`` (a file: a pipe nobody reads could fill)."""
    with open(f"{log}.out", "wb") as out:
        return subprocess.Popen([strace, "-f", "-qq", "-e", f"trace={TRACED}", "-o", str(log), "--", *argv],
                                env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _output(log: Path) -> str:
    return Path(f"{log}.out").read_text(errors="replace")[-4000:]


#: onnxruntime 1.32 turns its telemetry off by itself when one of these is set (CI services; the names
#: are in its library's strings, and each was checked here one by one, ``CI`` included): removed, so that
#: the control run shows the telemetry file under any CI and the server run shows teeserve's switch at work.
_CI_MARKERS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
               "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")


#: Where a user may redirect what TensorFlow's import writes (teeserve's guard leaves a user's own setting
#: alone): removed, so that the runs test teeserve's defaults whatever the machine's environment says.
_WRITE_HOMES = ("KERAS_HOME", "MPLCONFIGDIR", "TEST_TMPDIR", "TMPDIR", "JOBLIB_TEMP_FOLDER")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORT_", "XDG_")) and k not in _CI_MARKERS and k not in _WRITE_HOMES}
    # A home of the test's own: whatever a library would drop into ~/.cache or ~/.config lands there.
    # Bytecode caching is off (it writes __pycache__ files that are neither model nor traffic).
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return env


def test_plain_onnxruntime_writes_its_telemetry_file_the_control(strace: str, tmp_path: Path,
                                                                   onnx_model_dir: Path) -> None:
    """The control: onnxruntime used without teeserve writes its telemetry database under $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    code = ("import numpy as np, onnxruntime as ort, sys\n"
            "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "s.run(None, {s.get_inputs()[0].name: np.zeros((1, 8, 8), np.float32)})\n")
    log = tmp_path / "control.trace"
    proc = _traced(strace, log, [sys.executable, "-c", code, str(onnx_model_dir / "1" / "model.onnx")], _env(home),
                   tmp_path)
    assert proc.wait(120) == 0, _output(log)
    found = writes_in(log.read_text())
    assert any("onnxruntime.db" in w for w in found), \
        f"no telemetry file written; writes: {found}; environment names: {sorted(_env(home))}"
    assert list(home.rglob("onnxruntime.db"))


def test_plain_tensorflow_import_writes_keras_and_matplotlib_files_the_control(strace: str, tmp_path: Path) -> None:
    """The control for the SavedModel server: ``import tensorflow`` alone writes Keras's config, and
    Keras's import of matplotlib its font cache, under $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "control.trace"
    proc = _traced(strace, log, [sys.executable, "-c", "import tensorflow"], _env(home), tmp_path)
    assert proc.wait(300) == 0, _output(log)
    found = writes_in(log.read_text())
    assert any("keras.json" in w for w in found), found
    assert any("matplotlib" in w for w in found), found


@pytest.mark.parametrize("kind", ["onnx", "savedmodel"])
def test_serve_writes_nothing_to_the_file_system(strace: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                 kind: str, wrap_key: bytes) -> None:
    model_dir = request.getfixturevalue("encrypted_onnx_model_dir" if kind == "onnx" else "encrypted_saved_model_dir")
    model_file = "model.onnx" if kind == "onnx" else "saved_model.pb"
    home = tmp_path / "home"
    home.mkdir()
    key_file = tmp_path / "wrap_key"
    key_file.write_bytes(wrap_key)
    key_file.chmod(0o600)
    port, rest_port = free_port(), free_port()
    env = _env(home)
    env["ORT_DISABLE_TELEMETRY"] = "0"  # teeserve forces it off whatever the environment says
    log = tmp_path / "serve.trace"
    argv = [sys.executable, "-m", "teeserve", "serve", "--model_name=digits",
            f"--model_base_path={model_dir}", "--wrap-key", str(key_file), "--require-encrypted",
            "--host=127.0.0.1", f"--port={port}", f"--rest_api_port={rest_port}", "--file_system_poll_wait_seconds=1"]
    proc = _traced(strace, log, argv, env, tmp_path)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            wait_serving(ch, proc, lambda: _output(log), timeout=120)
            x = np.random.default_rng(3).random((2, 8, 8), dtype=np.float32)
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            grpc_classes = list(stub.Predict(digits_request(images=x), timeout=30).outputs["classes"].int64_val)
        r = httpx.post(f"http://127.0.0.1:{rest_port}/v1/models/digits:predict",
                       json={"instances": x.tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        assert [p["classes"] for p in r.json()["predictions"]] == grpc_classes
        time.sleep(1.5)  # a model-directory poll or two happen too
    finally:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        for pid in pids:  # the server under strace: SIGTERM, its drain, exit 0
            os.kill(int(pid), signal.SIGTERM)
        code = proc.wait(60)
    trace = log.read_text()
    assert "openat(" in trace and model_file in trace, "the trace did not see the server at work"
    assert code == 0, _output(log)
    written = writes_in(trace)
    assert written == [], "\n".join(written)
    assert [p for p in home.rglob("*")] == []
