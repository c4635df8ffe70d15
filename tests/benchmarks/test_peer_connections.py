"""bench_peers.py's count of the client connections each server process holds (the split that decides
a multi-worker round), against real sockets on loopback held by real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_peers  # noqa: E402

# A child that listens, accepts ``n`` connections, says how many, then waits to be killed.
_ACCEPTOR = """
import socket, sys
srv = socket.socket(fileno=int(sys.argv[1]))
conns = [srv.accept()[0] for _ in range(int(sys.argv[2]))]
print(len(conns), flush=True)
sys.stdin.read()
"""


def test_counts_each_processs_established_connections_on_the_port() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    children: list[subprocess.Popen[str]] = []
    clients = []

    def acceptor(n: int) -> subprocess.Popen[str]:
        child = subprocess.Popen([sys.executable, "-c", _ACCEPTOR, str(listener.fileno()), str(n)],
                                 pass_fds=(listener.fileno(),), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        children.append(child)
        return child

    try:
        # one child at a time on the shared listening socket: the first accepts 3 connections, the
        # second (started once the first has them all) the fourth
        first = acceptor(3)
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        assert first.stdout.readline().strip() == "3"
        second = acceptor(1)
        clients.append(socket.create_connection(("127.0.0.1", port)))
        assert second.stdout.readline().strip() == "1"
        pids = [c.pid for c in children]
        other = socket.socket()  # a connection on another port is not counted
        other_listener = socket.create_server(("127.0.0.1", 0))
        other.connect(other_listener.getsockname())
        counts = bench_peers.connections_by_pid(port, [*pids, 1 << 22])  # a pid that does not exist
        assert counts == {pids[0]: 3, pids[1]: 1}, counts
        # the client side of those connections (this process) has another local port: not counted
        assert bench_peers.connections_by_pid(port, [os.getpid()]) == {}
        other.close()
        other_listener.close()
    finally:
        for c in clients:
            c.close()
        for child in children:
            child.kill()
            child.wait()
        listener.close()
