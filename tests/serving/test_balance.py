"""``--worker-connection-balance round-robin`` at the socket level (serving/_balance.py).

Real listening sockets on 127.0.0.1 sharing a port with SO_REUSEPORT, the real kernel loading and
running the program (its verifier checks every instruction): a connection is made, then every
listener is asked which one got it, so the dealing order is observed, not inferred. The refusal path
runs the same code in a child process whose capabilities were dropped with ``setpriv``, as a server
started without CAP_BPF would be. (The serving processes themselves: tests/serving/test_workers.py.)
"""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import sys

import pytest

from teeserve.serving._balance import (RoundRobin, attach_round_robin, listening_sockets,
                                       round_robin_program)


def reuseport_group(count: int, family: int = socket.AF_INET6) -> list[socket.socket]:
    """``count`` listeners on one port, joined in list order (the kernel's index of each in the group)."""
    group: list[socket.socket] = []
    host = "::" if family == socket.AF_INET6 else "127.0.0.1"
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, group[0].getsockname()[1] if group else 0))
        s.listen(64)
        s.setblocking(False)
        group.append(s)
    return group


def dealt(group: list[socket.socket], connections: int) -> list[int]:
    """Connect ``connections`` times, one after the other; the index of the listener that got each."""
    port = group[0].getsockname()[1]
    order = []
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            ready, _, _ = select.select(group, [], [], 5)
            assert len(ready) == 1, ready
            conn, _ = ready[0].accept()
            conn.close()
            order.append(group.index(ready[0]))
    return order


@pytest.mark.parametrize("family", [socket.AF_INET6, socket.AF_INET])
@pytest.mark.parametrize("size", [2, 3])
def test_round_robin_deals_new_connections_to_each_listener_in_turn(family: int, size: int) -> None:
    group = reuseport_group(size, family)
    try:
        with RoundRobin(size) as program:
            program.attach(group[-1])  # any member: the program belongs to the whole group
        order = dealt(group, 4 * size)
        assert order == [i % size for i in range(4 * size)], order
    finally:
        for s in group:
            s.close()


def test_an_index_past_the_group_falls_back_to_the_kernels_hash() -> None:
    """Dealing over 3 while one listener of the 3 is gone (a worker restarting): every connection is
    still accepted by a listener that is there."""
    group = reuseport_group(3)
    try:
        with RoundRobin(3) as program:
            program.attach(group[0])
        group.pop().close()
        order = dealt(group, 12)
        # Turns 0 and 1 still go to listeners 0 and 1; every third turn (index 2) to either, by hash.
        assert [o for i, o in enumerate(order) if i % 3 != 2] == [0, 1] * 4, order
        # Dealing over 2 on the same group: in turn again.
        with RoundRobin(2) as program:
            program.attach(group[0])
        assert dealt(group, 6) == [0, 1, 0, 1, 0, 1]
    finally:
        for s in group:
            s.close()


def test_listening_sockets_finds_only_this_processs_listeners_on_the_port() -> None:
    group = reuseport_group(2)
    port = group[0].getsockname()[1]
    other = reuseport_group(1)  # another port
    bound = socket.socket(socket.AF_INET6)  # bound to the port, never listening (the supervisor's reservation)
    bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    bound.bind(("::", port))
    client = socket.create_connection(("127.0.0.1", port))
    [ready], _, _ = select.select(group, [], [], 5)
    accepted, _ = ready.accept()  # an established socket whose local port is the port
    try:
        found = listening_sockets(port)
        try:
            assert sorted(s.getsockname()[1] for s in found) == [port, port]
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in found)
            # Duplicates: closing them leaves the originals listening.
            assert {s.fileno() for s in found}.isdisjoint({g.fileno() for g in group})
        finally:
            for s in found:
                s.close()
        assert group[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        elsewhere = listening_sockets(other[0].getsockname()[1])
        assert [s.getsockname()[1] for s in elsewhere] == [other[0].getsockname()[1]]
        for s in elsewhere:
            s.close()
        # Two listeners of this process in one group: a count of workers cannot deal over that.
        assert attach_round_robin([port], 2) == {port: 0}
    finally:
        for s in (*group, *other, bound, client, accepted):
            s.close()


def test_attach_round_robin_deals_between_this_process_and_another() -> None:
    """One listener here, one in another process (as two workers): attach_round_robin finds this
    process's listener and deals over both, this process's taking every other connection."""
    mine = reuseport_group(1)
    port = mine[0].getsockname()[1]
    other = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time\n"
         "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
         f"s.bind(('::', {port})); s.listen(64); print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "up\n"
        assert attach_round_robin([port], 2) == {port: 1}
        got = []
        clients = []
        for _ in range(6):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            ready, _, _ = select.select(mine, [], [], 0.3)
            if ready:
                conn, _ = mine[0].accept()
                conn.close()
            got.append(bool(ready))
        assert got == [True, False] * 3  # this process joined the group first: index 0
        for c in clients:
            c.close()
    finally:
        other.kill()
        other.wait()
        mine[0].close()


def test_round_robin_program_checks_its_argument() -> None:
    with pytest.raises(ValueError, match="sockets must be >= 1"):
        round_robin_program(3, 0)
    one, two = round_robin_program(3, 1), round_robin_program(3, 2)
    assert len(one) == len(two) and len(one) % 8 == 0 and one != two


def test_without_cap_bpf_the_kernel_refuses_and_says_why() -> None:
    """Run as a server without CAP_BPF would run (setpriv drops it, and CAP_SYS_ADMIN, from the bounding
    set). Where unprivileged eBPF is allowed (kernel.unprivileged_bpf_disabled = 0) a socket filter
    loads without them, and this test then checks that instead."""
    code = ("from teeserve.serving._balance import RoundRobin, BalanceUnavailable\n"
            "try:\n    RoundRobin(2).close()\nexcept BalanceUnavailable as e:\n    print('refused', e.errno, e.strerror)\n"
            "else:\n    print('loaded')\n")
    # (not root: the process has no CAP_BPF to drop, and setpriv could not drop it without CAP_SETPCAP)
    drop = ["setpriv", "--bounding-set=-bpf,-sys_admin", "--inh-caps=-bpf,-sys_admin", "--"] if os.geteuid() == 0 else []
    out = subprocess.run([*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    try:
        unprivileged_allowed = open("/proc/sys/kernel/unprivileged_bpf_disabled").read().strip() == "0"
    except OSError:
        unprivileged_allowed = False
    if unprivileged_allowed:
        assert out.stdout.strip() == "loaded"
    else:
        assert out.stdout.strip() == f"refused {errno.EPERM} {os.strerror(errno.EPERM)}"
