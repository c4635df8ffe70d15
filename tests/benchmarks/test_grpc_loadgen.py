"""The benchmarks' C++ gRPC load generator (benchmarks/grpcload) against real gRPC servers on loopback.

A load generator that miscounts makes every benchmark figure wrong, so it is tested like the rest: it
sends the request file's bytes unchanged, one TCP connection per client, counts only OK calls with a
non-empty reply as requests and every other status by name, speaks mutual TLS, and refuses bad
arguments with a message that names them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import grpcload  # noqa: E402

SERVICE, METHOD = "test.Bench", "Call"
PATH = f"/{SERVICE}/{METHOD}"


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return grpcload.ensure_built(tmp_path_factory.mktemp("grpc-loadgen-bin"))


class _Server:
    """A grpc.aio server in a thread of its own, answering PATH with ``behaviour(call_number)``."""

    def __init__(self, behaviour: Any, credentials: grpc.ServerCredentials | None = None) -> None:
        self.behaviour = behaviour
        self.peers: set[str] = set()
        self.bodies: list[bytes] = []
        self.calls = 0
        self._credentials = credentials
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        self.peers.add(context.peer())
        if len(self.bodies) < 50:
            self.bodies.append(body)
        outcome = self.behaviour(self.calls)
        if isinstance(outcome, grpc.StatusCode):
            await context.abort(outcome, "refused by the test")
        return outcome

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(self._handle)}),))
        if self._credentials:
            self.port = self._server.add_secure_port("127.0.0.1:0", self._credentials)
        else:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def __enter__(self) -> _Server:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _run(exe: Path, port: int, request: Path, **kw: Any) -> dict[str, Any]:
    args = dict(target=f"127.0.0.1:{port}", method=PATH, request=request, concurrency=4, threads=2,
                duration=0.8, warmup=0.2, startup=0.3, timeout=10)
    args.update(kw)
    return grpcload.run(exe, **args)


def test_sends_the_file_bytes_over_one_connection_per_client(exe: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.bin"
    request.write_bytes(bytes(range(256)) * 40)  # 10 KB, every byte value
    with _Server(lambda n: b"answer") as server:
        result = _run(exe, server.port, request, concurrency=6, threads=2)
    assert result["errors"] == 0 and result["errors_by_kind"] == {}, result
    assert result["requests"] > 10, result
    assert result["rps"] == pytest.approx(result["requests"] / 0.8)
    assert 0 < result["p50_ms"] <= result["p99_ms"], result
    assert len(server.peers) == 6, sorted(server.peers)  # one TCP connection (client port) per client
    assert server.bodies and all(b == request.read_bytes() for b in server.bodies)
    # every call the server answered was counted somewhere: warm-up, window, or after it (at most one
    # call per client ends after the window closes)
    counted = result["requests"] + result["warmup_requests"]
    assert counted <= server.calls <= counted + 6, (counted, server.calls)
    assert result["loadgen_cpu_us_per_req"] > 0 and result["tool"] == "cpp" and result["tls"] is False


def test_counts_each_status_by_name_and_only_ok_calls_as_requests(exe: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.bin"
    request.write_bytes(b"x")

    def every_third_refused(n: int) -> bytes | grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND if n % 3 == 0 else (b"" if n % 3 == 1 else b"ok")

    with _Server(every_third_refused) as server:
        result = _run(exe, server.port, request)
    kinds = result["errors_by_kind"]
    assert set(kinds) == {"NOT_FOUND", "empty reply"}, result
    assert result["errors"] == sum(kinds.values())
    # a third of the calls each: OK with a reply, OK but empty, NOT_FOUND
    total = result["requests"] + result["errors"]
    for n in (result["requests"], kinds["NOT_FOUND"], kinds["empty reply"]):
        assert abs(n - total / 3) <= 8, result
    assert server.calls >= total


def test_mutual_tls(exe: Path, tmp_path: Path) -> None:
    from teeserve import tlsmaterial

    tlsmaterial.make_tls_material(tmp_path / "tls", server_cn="localhost", client_cn="bench-client",
                                  server_dns=["localhost"], server_ips=["127.0.0.1"], force=True)
    d = tmp_path / "tls"
    creds = grpc.ssl_server_credentials(
        [((d / "server" / "key.pem").read_bytes(), (d / "server" / "cert.pem").read_bytes())],
        root_certificates=(d / "ca_cert.pem").read_bytes(), require_client_auth=True)
    request = tmp_path / "request.bin"
    request.write_bytes(b"secret request")
    tls = {"ca": str(d / "ca_cert.pem"), "cert": str(d / "client" / "cert.pem"),
           "key": str(d / "client" / "key.pem")}
    with _Server(lambda n: b"ok", creds) as server:
        result = _run(exe, server.port, request, tls=tls, server_name="localhost")
        assert result["errors"] == 0 and result["requests"] > 0 and result["tls"] is True, result
        # without a client certificate the server refuses the handshake: a clear failure, not a hang
        no_cert = [str(exe), "--target", f"127.0.0.1:{server.port}", "--method", PATH, "--request",
                   str(request), "--ca", tls["ca"], "--server-name", "localhost", "--connect-timeout", "2",
                   "--duration", "0.5"]
        done = subprocess.run(no_cert, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "could not connect" in done.stderr and "TLS" in done.stderr, done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", PATH, "--request", "REQ"], "--target, --method and --request are required"),
    (["--target", "127.0.0.1:1", "--method", "Call", "--request", "REQ"], "--method must be a path"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "MISSING"], "--request MISSING"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "REQ", "--concurrency", "0"],
     "--concurrency and --threads must be >= 1"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "REQ", "--duration", "ten"],
     "--duration: not a number: ten"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "REQ", "--cert", "c.pem"],
     "--cert and --key go together"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "REQ", "--bogus", "1"], "unknown option --bogus"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request"], "--request: needs a value"),
])
def test_bad_arguments_are_named(exe: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "REQ").write_bytes(b"x")
    done = subprocess.run([str(exe), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.startswith("grpc_loadgen: error: ") and message in done.stderr, done.stderr


def test_peer_benchmark_generator_drives_it(exe: Path, tmp_path: Path) -> None:
    """``loadgen.py --tool cpp`` (what bench_peers.py runs) passes its settings through and reports the
    tool's JSON."""
    request = tmp_path / "request.bin"
    request.write_bytes(b"peer request")
    with _Server(lambda n: b"ok") as server:
        done = subprocess.run(
            [sys.executable, str(BENCHMARKS / "peers" / "loadgen.py"), "--kind", "grpc", "--tool", "cpp",
             "--cpp-exe", str(exe), "--target", f"127.0.0.1:{server.port}", "--method", PATH, "--request",
             str(request), "--concurrency", "3", "--procs", "2", "--duration", "0.6", "--warmup", "0.2",
             "--startup", "0.3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tool"] == "cpp" and result["concurrency"] == 3 and result["threads"] == 2
    assert result["requests"] > 0 and result["errors"] == 0
    assert len(server.peers) == 3 and set(server.bodies) == {b"peer request"}
