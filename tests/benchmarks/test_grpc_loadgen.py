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

    def __init__(self, behaviour: Any, credentials: grpc.ServerCredentials | None = None, *,
                 port: int = 0, unix_path: str | None = None) -> None:
        self.behaviour = behaviour
        self.port = port
        self.unix_path = unix_path
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
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if isinstance(outcome, grpc.StatusCode):
            await context.abort(outcome, "refused by the test")
        return outcome

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(self._handle)}),))
        address = f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"
        if self._credentials:
            self.port = self._server.add_secure_port(address, self._credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        self.target = address if self.unix_path else f"127.0.0.1:{self.port}"
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
    kinds = {k: v for k, v in result["errors_by_kind"].items() if not k.startswith("after the window")}
    assert set(kinds) == {"NOT_FOUND", "empty reply"}, result
    # a third of the calls each: OK with a reply, OK but empty, NOT_FOUND
    total = result["requests"] + sum(kinds.values())
    for n in (result["requests"], kinds["NOT_FOUND"], kinds["empty reply"]):
        assert abs(n - total / 3) <= 8, result


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
    assert f"could not connect to 127.0.0.1:{server.port} within 2 s" in done.stderr, done.stderr


#: valid arguments, to which each case below adds its bad one
_ARGS = ["--target", "127.0.0.1:1", "--method", PATH, "--request", "REQ"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--method", PATH, "--request", "REQ"], "--target, --method and --request are required"),
    (["--target", "127.0.0.1:1", "--method", "Call", "--request", "REQ"], "--method must be a path"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "MISSING"], "--request MISSING"),
    ([*_ARGS, "--concurrency", "0"], "--concurrency: must be between 1 and 100000, got 0"),
    ([*_ARGS, "--duration", "ten"], "--duration: not a number: ten"),
    ([*_ARGS, "--duration", "0"], "--duration: must be > 0"),
    ([*_ARGS, "--cert", "c.pem"], "--cert and --key go together"),
    ([*_ARGS, "--bogus", "1"], "unknown option --bogus"),
    ([*_ARGS, "--bogus"], "unknown option --bogus"),
    ([*_ARGS, "--concurrency", "2.5"], "--concurrency: not a whole number: 2.5"),
    ([*_ARGS, "--concurrency", "1000000000"], "--concurrency: must be between 1 and 100000"),
    ([*_ARGS, "--connect-timeout", "0"], "--connect-timeout: must be > 0"),
    ([*_ARGS, "--startup", "-5"], "--startup: must be >= 0"),
    ([*_ARGS, "--timeout", "1e13"], "--timeout: must be >= 0 and <= 1e6 seconds"),
    ([*_ARGS, "--t0", "-1"], "--t0: not a positive epoch"),
    (["--target", "127.0.0.1:1", "--method", PATH, "--request", "."], "--request .: not a regular file"),
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


def test_latency_includes_the_servers_time(exe: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.bin"
    request.write_bytes(b"x")

    async def slow(n: int) -> bytes:
        await asyncio.sleep(0.03)
        return b"ok"

    with _Server(slow) as server:
        result = _run(exe, server.port, request, concurrency=2, duration=0.6)
    assert result["requests"] > 0 and result["errors"] == 0, result
    assert result["p50_ms"] >= 30.0, result  # a call cannot end before the server's 30 ms sleep


def test_a_stalled_server_is_reported_and_does_not_hold_the_tool(exe: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.bin"
    request.write_bytes(b"x")

    async def never(n: int) -> bytes:
        await asyncio.sleep(3600)
        return b"late"

    base = ["--method", PATH, "--request", str(request), "--concurrency", "3", "--threads", "2",
            "--duration", "0.3", "--warmup", "0", "--startup", "0.3"]
    with _Server(never) as server:
        target = ["--target", f"127.0.0.1:{server.port}"]
        # no per-call deadline: the calls still running --drain seconds after the window are cancelled
        no_deadline = subprocess.run([str(exe), *target, *base, "--timeout", "0", "--drain", "0.5"],
                                     capture_output=True, text=True, timeout=60)
        # a deadline that falls after the window: those failures are still reported
        deadline = subprocess.run([str(exe), *target, *base, "--timeout", "1", "--drain", "30"],
                                  capture_output=True, text=True, timeout=60)
    for done in (no_deadline, deadline):
        assert done.returncode == 0, done.stderr
    first, second = (json.loads(d.stdout) for d in (no_deadline, deadline))
    assert first["requests"] == 0 and first["errors_by_kind"] == {"unfinished (cancelled after --drain)": 3}
    assert second["requests"] == 0 and second["errors_by_kind"] == {"after the window: DEADLINE_EXCEEDED": 3}
    assert first["errors"] == second["errors"] == 3


def test_output_is_valid_json_for_any_target(exe: Path, tmp_path: Path) -> None:
    sock_dir = tmp_path / 'q"uote\\dir'
    sock_dir.mkdir()
    request = tmp_path / "request.bin"
    request.write_bytes(b"x")
    with _Server(lambda n: b"ok", unix_path=str(sock_dir / "s.sock")) as server:
        result = _run(exe, 0, request, target=server.target, concurrency=1, threads=1, duration=0.3)
    assert result["target"] == server.target and result["requests"] > 0, result


def test_clients_connected_after_the_warm_up_are_refused(exe: Path, tmp_path: Path) -> None:
    """A run whose window opened before its clients could connect measures nothing: an error, not a
    report of 0 requests."""
    import socket

    request = tmp_path / "request.bin"
    request.write_bytes(b"x")
    with socket.socket() as s:  # a free port, for a server that starts only after the window opened
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(exe), "--target", f"127.0.0.1:{port}", "--method", PATH, "--request",
                             str(request), "--concurrency", "2", "--duration", "0.3", "--warmup", "0.1",
                             "--startup", "0", "--connect-timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(1.0)
        with _Server(lambda n: b"ok", port=port):
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2 and out == "", (out, err)
    assert "after the warm-up had ended; raise --startup" in err, err


def test_two_builds_at_once_both_get_a_working_binary(tmp_path: Path) -> None:
    """bench_peers.py and bench_serving.py may build into the same directory at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: grpcload.ensure_built(tmp_path), range(2)))
    assert built[0] == built[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [built[0].name]  # no temporary file left
    done = subprocess.run([str(built[0]), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: grpc_loadgen")
