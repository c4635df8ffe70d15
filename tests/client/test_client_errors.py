"""`teeserve client predict` / `client bench`: bad input is one clear line, never a hang or a traceback
(no server needed: each case fails before or at the first connection; a raw TCP peer on 127.0.0.1
stands in for a port that does not speak HTTP/1.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from teeserve.cli import main


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("teeserve: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bench_procs_child_failure_is_reported_not_waited_for(tmp_path: Path) -> None:
    """A --procs child that failed (here: a CA file that does not exist) used to leave the parent
    waiting for its answer for ever."""
    for rest in ([], ["--rest"]):
        proc = subprocess.run(
            [sys.executable, "-m", "teeserve", "client", "bench", "-url", "127.0.0.1:9", "-ca",
             str(tmp_path / "missing-ca.pem"), "-cnum", "2", "-loop", "1", "--procs", "2", "--warmup", "0",
             "--quiet", *rest], capture_output=True, text=True, timeout=90)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("teeserve: error: ") and "missing-ca.pem" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert "summary:" not in proc.stdout


@pytest.mark.parametrize(("argv", "expect"), [
    (["-cnum", "0"], "-cnum must be at least 1, got 0"),
    (["-batch", "0"], "-batch must be at least 1, got 0"),
    (["-loop", "-1"], "-loop must be at least 0, got -1"),
    (["--procs", "0"], "--procs must be at least 1, got 0"),
    (["--warmup", "-2"], "--warmup must be at least 0, got -2"),
])
def test_bench_bad_counts_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    err = one_line_error(capsys, ["client", "bench", "-url", "127.0.0.1:9", *argv], 2)
    assert expect in err, err


def test_bench_plot_without_matplotlib_fails_before_the_run(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    err = one_line_error(capsys, ["client", "bench", "-url", "127.0.0.1:9", "--plot", "b.png"], 2)
    assert "--plot needs matplotlib" in err and "teeserve[plot]" in err


def test_predict_top_k_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["client", "predict", "--url", "127.0.0.1:9", "--model", "m", "--top-k", "-1"], 2)
    assert "--top-k must be at least 1, got -1" in err


def test_server_name_without_ca_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--server-name alone used to be ignored: the request went in plaintext."""
    err = one_line_error(capsys, ["client", "predict", "--url", "127.0.0.1:9", "--model", "m",
                                  "--server-name", "grpc.example.com"], 1)
    assert "--server-name needs --ca" in err and "plaintext" in err


def test_rest_tls_files_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from teeserve import tlsmaterial

    bogus = tmp_path / "notacert.pem"
    bogus.write_text("not a certificate\n")
    base = ["client", "predict", "--rest", "--url", "127.0.0.1:9", "--model", "m"]
    err = one_line_error(capsys, [*base, "--ca", str(bogus)], 1)
    assert f"{bogus}: not a usable CA certificate" in err, err
    tls = tlsmaterial.make_tls_material(tmp_path / "tls", server_cn="localhost", client_cn="c",
                                        server_ips=("127.0.0.1",))
    # a key that does not belong to the certificate
    err = one_line_error(capsys, [*base, "--ca", str(tls.ca_cert), "--crt", str(tls.client_cert),
                                  "--key", str(tls.server_key)], 1)
    assert f"{tls.client_cert}, {tls.server_key}: not a usable client certificate and matching key" in err, err
    # an encrypted key: an error, not OpenSSL's pass-phrase prompt on the terminal
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(tls.client_key).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    err = one_line_error(capsys, [*base, "--ca", str(tls.ca_cert), "--crt", str(tls.client_cert),
                                  "--key", str(encrypted)], 1)
    assert f"{encrypted}: the client key is encrypted" in err, err


def test_rest_predict_on_a_port_that_is_not_http_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A REST request sent to a gRPC port reads HTTP/2 frames: http.client raises BadStatusLine,
    which is no OSError and used to end as an internal error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff\x00\x04\x00\x10\x00\x00")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        err = one_line_error(capsys, ["client", "predict", "--rest", "--url", f"127.0.0.1:{port}", "--model", "m"], 1)
    finally:
        listener.close()
    assert f"127.0.0.1:{port}: not an HTTP/1.1 answer" in err and "REST port" in err, err


def test_raw_json_writes_string_tensors() -> None:
    import json

    from teeserve.cli._cmd_client import _bytes_json

    doc = {"s": [b"text", b"\xff\x00"]}
    assert json.loads(json.dumps(doc, default=_bytes_json)) == {"s": ["text", {"b64": "/wA="}]}
    with pytest.raises(TypeError):
        json.dumps({"x": object()}, default=_bytes_json)
