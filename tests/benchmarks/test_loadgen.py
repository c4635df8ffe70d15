"""The serving benchmark's gRPC load generator opens the connections it says it opens.

``bench_serving.py _loadgen --channels N`` must reach the server over N TCP connections: a server with
``--workers`` can only spread connections, so a generator whose channels shared one connection (gRPC's
default for channels of one process with the same target and arguments) measured one worker, or two
on one core, depending on where the kernel put that connection.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serving.py"
PREDICT_SERVICE = "tensorflow.serving.PredictionService"


async def _peers_seen(request: Path, channels: int, concurrency: int) -> tuple[set[str], dict]:
    peers: set[str] = set()

    async def predict(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        peers.add(context.peer())
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        PREDICT_SERVICE, {"Predict": grpc.unary_unary_rpc_method_handler(predict)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH), "_loadgen", "--target", f"127.0.0.1:{port}", "--request", str(request),
            "--concurrency", str(concurrency), "--channels", str(channels), "--duration", "0.5",
            "--warmup", "0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return peers, json.loads(out.decode().strip().splitlines()[-1])
    finally:
        await server.stop(None)


def test_each_generator_channel_is_its_own_connection(tmp_path: Path) -> None:
    request = tmp_path / "request.bin"
    request.write_bytes(b"")  # an empty PredictRequest: the test's handler does not parse it
    peers, result = asyncio.run(_peers_seen(request, channels=4, concurrency=8))
    assert result["errors"] == 0 and result["latencies"], result
    assert len(peers) == 4, sorted(peers)  # "ipv4:127.0.0.1:<client port>", one per TCP connection
