"""`teeserve client predict` and `teeserve client bench` against a real deployment (issue 5 §1, §2)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from teeserve.cli import main

pytestmark = pytest.mark.slow

SUMMARY = re.compile(r"^summary: cnum (\d+), batch (\d+), e2e time\(s\) [0-9.]+, average latency\(ms\) [0-9.]+, "
                     r"tps: [0-9.]+$", re.M)


@pytest.mark.parametrize("rest", [False, True])
def test_predict_image_gives_the_right_digit(deployment, capsys, rest: bool) -> None:
    sample = sorted(deployment.samples.glob("digit_8_*.png"))[0]
    url = deployment.rest_url if rest else deployment.grpc_url
    argv = ["client", "predict", "--url", url, "--model", "digits-onnx", "--image", str(sample),
            "--top-k", "3", *deployment.tls_args()] + (["--rest"] if rest else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"example 0: class 8 \(", out), out


def test_predict_npy_and_json_raw_outputs(deployment, capsys, tmp_path) -> None:
    from teeserve import models

    sample = sorted(deployment.samples.glob("digit_2_*.png"))[0]
    x = models.digits_image_to_input(sample)[None, ...]
    np.save(tmp_path / "x.npy", x)
    assert main(["client", "predict", "--url", deployment.grpc_url, "--model", "digits-onnx", "--npy",
                 str(tmp_path / "x.npy"), "--raw", *deployment.tls_args()]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1 and np.argmax(doc["outputs"]["probabilities"][0]) == 2
    assert main(["client", "predict", "--rest", "--url", deployment.rest_url, "--model", "digits-onnx", "--json",
                 json.dumps({"images": x.tolist()}), "--raw", *deployment.tls_args()]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["outputs"]["classes"] == [2]


@pytest.mark.parametrize("case, expect", [
    ("unknown_model", "Servable not found for request: Latest(nope)"),
    ("wrong_input", "images"),
    ("no_client_cert", "TLS handshake may have been refused"),
    ("wrong_name", "TLS handshake may have been refused"),
])
def test_predict_errors_are_one_clear_line(deployment, capsys, tmp_path, case: str, expect: str) -> None:
    sample = str(sorted(deployment.samples.glob("digit_1_*.png"))[0])
    tls = deployment.tls_args()
    argv = ["client", "predict", "--url", deployment.grpc_url, "--model", "digits-onnx", "--image", sample, *tls]
    if case == "unknown_model":
        argv[argv.index("digits-onnx")] = "nope"
    elif case == "wrong_input":
        np.save(tmp_path / "bad.npy", np.zeros((1, 3, 3), np.float32))
        argv[argv.index("--image"):argv.index("--image") + 2] = ["--npy", str(tmp_path / "bad.npy")]
    elif case == "no_client_cert":
        argv = argv[:argv.index("--crt")] + argv[argv.index("--server-name"):]
    elif case == "wrong_name":
        argv[-1] = "other.example.com"
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert expect in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_bench_reference_flags_and_summary_line(deployment, capsys, tmp_path) -> None:
    t = deployment.tls
    png = tmp_path / "bench.png"
    code = main(["client", "bench", "-url", deployment.grpc_url, "-ca", str(t.ca_cert), "-crt", str(t.client_cert),
                 "-key", str(t.client_key), "--server-name", "grpc.tf-serving.service.com",
                 "--model", "digits-onnx", "--input-name", "images", "--shape", "8,8",
                 "-batch", "2", "-cnum", "3", "-loop", "20", "--json", "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 0, out
    m = SUMMARY.search(out)
    assert m and m.group(1) == "3" and m.group(2) == "2", out
    # The reference's per-request lines (stdout is not a terminal here).
    assert len(re.findall(r"^query: secure channel, task \d+, batch 2, loop_idx \d+, latency\(ms\) [0-9.]+, "
                          r"tps: [0-9.]+$", out, re.M)) == 60
    doc = json.loads(out.strip().splitlines()[-2] if out.strip().endswith(str(png)) else out.strip().splitlines()[-1])
    assert doc["requests"] == 60 and doc["errors"] == {} and doc["latency_ms"]["p99"] >= doc["latency_ms"]["p50"]
    assert png.stat().st_size > 1000


def test_bench_counts_errors_by_status(deployment, capsys) -> None:
    t = deployment.tls
    code = main(["client", "bench", "-url", deployment.grpc_url, "-ca", str(t.ca_cert), "-crt", str(t.client_cert),
                 "-key", str(t.client_key), "--server-name", "grpc.tf-serving.service.com", "--model", "missing",
                 "--input-name", "images", "--shape", "8,8", "-cnum", "2", "-loop", "5", "--warmup", "0",
                 "--quiet", "--json"])
    out = capsys.readouterr().out
    assert code == 1
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["errors"] == {"NOT_FOUND": 10} and doc["requests"] == 0
    # why, and not only how many
    assert doc["first_error"] == "NOT_FOUND: Servable not found for request: Latest(missing)", doc
    assert "first error: NOT_FOUND: Servable not found for request: Latest(missing)" in out
    # each failed request's reference line says so (stdout is not a terminal: the lines are on)
    assert main(["client", "bench", "-url", deployment.grpc_url, "-ca", str(t.ca_cert), "-crt", str(t.client_cert),
                 "-key", str(t.client_key), "--server-name", "grpc.tf-serving.service.com", "--model", "missing",
                 "--input-name", "images", "--shape", "8,8", "-cnum", "1", "-loop", "2", "--warmup", "0"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("query: ")]
    assert len(lines) == 2 and all(ln.endswith(", error NOT_FOUND") for ln in lines), lines


def test_bench_rest_duration(deployment, capsys) -> None:
    t = deployment.tls
    code = main(["client", "bench", "--rest", "-url", deployment.rest_url, "-ca", str(t.ca_cert),
                 "-crt", str(t.client_cert), "-key", str(t.client_key), "--server-name", "grpc.tf-serving.service.com",
                 "--model", "digits-onnx", "--input-name", "images", "--shape", "8,8", "-cnum", "2", "-loop", "0",
                 "--duration", "1.5", "--quiet", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["requests"] > 0 and doc["errors"] == {}


@pytest.mark.parametrize("procs", [1, 2])
def test_bench_loop_0_reports_what_it_measured_when_interrupted(deployment, procs: int) -> None:
    """-loop 0 runs until Ctrl-C: the interrupt ends the run and the summary gives what was measured
    until then (it used to print 0 requests and exit 1; with --procs, exit 130 and nothing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    t = deployment.tls
    proc = subprocess.Popen(
        [sys.executable, "-m", "teeserve", "client", "bench", "-url", deployment.grpc_url, "-ca", str(t.ca_cert),
         "-crt", str(t.client_cert), "-key", str(t.client_key), "--server-name", "grpc.tf-serving.service.com",
         "--model", "digits-onnx", "--input-name", "images", "--shape", "8,8", "-cnum", "2", "-loop", "0",
         "--procs", str(procs), "--warmup", "1", "--quiet", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as from a terminal: a test run started in the background (CI, `make test &`) has SIGINT
        # ignored, the child would inherit that, and Python then installs no Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err, err
    assert SUMMARY.search(out), out
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["requests"] > 0 and doc["errors"] == {}, doc
