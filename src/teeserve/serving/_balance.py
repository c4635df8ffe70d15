"""``--worker-connection-balance round-robin``: new connections dealt to the ``--workers`` in turn.

Why: the workers share each port with ``SO_REUSEPORT``, and the kernel hands a new connection to one
of them by a hash of its addresses and ports, that is, at random. A client that opens a few
long-lived connections (gRPC channels, keep-alive HTTP) then often loads one worker with most of them
(16 connections over 2 workers split 11+5 or worse one time in five), and that worker's queue makes
the latency tail while the other idles (docs/serving.md, "Several workers"). A Python worker cannot
lend its spare core to the busy one, so the split has to be even from the start.

How: Linux lets a ``SO_REUSEPORT`` group carry a program that picks the socket for each new
connection (``SO_ATTACH_REUSEPORT_EBPF``, Linux 4.5; the atomic fetch-and-add used here, 5.12). The
program below keeps one counter in a one-entry array map and answers ``counter++ % workers``: the
index of a socket in the group. An index past the group's end (a worker restarting, so one fewer
socket) falls back to the kernel's hash. Loading a program needs ``CAP_BPF`` (or root) unless the
host allows unprivileged eBPF; an SGX enclave has no ``bpf()`` at all.

The instructions are built by :func:`round_robin_program` (pure: bytes in, bytes out, tested against
the kernel's verifier in tests/serving/test_balance.py); :class:`RoundRobin` does the two system
calls, and :func:`listening_sockets` finds the listening sockets gRPC opened in this process (grpcio
does not hand them out).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
from typing import Any

__all__ = ["BalanceUnavailable", "RoundRobin", "attach_round_robin", "listening_sockets", "round_robin_program"]

# bpf(2) commands, map and program types, and the socket option (linux/bpf.h, asm-generic/socket.h).
_BPF_MAP_CREATE = 0
_BPF_PROG_LOAD = 5
_BPF_MAP_TYPE_ARRAY = 2
_BPF_PROG_TYPE_SOCKET_FILTER = 1
_BPF_PSEUDO_MAP_FD = 1
_BPF_FUNC_MAP_LOOKUP_ELEM = 1
_BPF_ADD_FETCH = 0x01  # BPF_ADD | BPF_FETCH
SO_ATTACH_REUSEPORT_EBPF = 52
#: bpf(2)'s number for a 64-bit process, by ``uname -m`` (a 32-bit Python on a 64-bit kernel is refused:
#: its table differs, and ``uname`` names the kernel's).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "ppc64": 361, "s390x": 351}

# Opcodes (class | size/op | source), linux/bpf_common.h and linux/bpf.h.
_ST_MEM_W = 0x62  # *(u32 *)(dst + off) = imm
_ALU64_MOV_X = 0xBF  # dst = src
_ALU64_MOV_K = 0xB7  # dst = imm
_ALU64_ADD_K = 0x07  # dst += imm
_LD_IMM64 = 0x18  # dst = imm64 (two instructions; src_reg 1: imm is a map fd)
_CALL = 0x85
_JEQ_K = 0x15  # if dst == imm: pc += off
_ATOMIC_W = 0xC3  # atomic op on *(u32 *)(dst + off) with src (imm says which)
_ALU32_MOD_K = 0x94  # dst = (u32)dst % imm
_EXIT = 0x95


class BalanceUnavailable(OSError):
    """The kernel refused the program or the socket option (no privilege, no eBPF, too old)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def round_robin_program(map_fd: int, sockets: int) -> bytes:
    """The program's instructions: ``return counter++ % sockets`` (0 if the map lookup fails, which
    the verifier makes us handle). ``map_fd`` is the one-entry u32 array holding the counter."""
    if sockets < 1:
        raise ValueError("sockets must be >= 1")
    return b"".join([
        _insn(_ST_MEM_W, dst=10, off=-4, imm=0),  # key = 0, on the stack
        _insn(_ALU64_MOV_X, dst=2, src=10),
        _insn(_ALU64_ADD_K, dst=2, imm=-4),  # r2 = &key
        _insn(_LD_IMM64, dst=1, src=_BPF_PSEUDO_MAP_FD, imm=map_fd), _insn(0),  # r1 = the map
        _insn(_CALL, imm=_BPF_FUNC_MAP_LOOKUP_ELEM),  # r0 = &counter or NULL
        _insn(_JEQ_K, dst=0, off=5, imm=0),
        _insn(_ALU64_MOV_K, dst=1, imm=1),
        _insn(_ATOMIC_W, dst=0, src=1, imm=_BPF_ADD_FETCH),  # r1 = counter, counter += 1
        _insn(_ALU32_MOD_K, dst=1, imm=sockets),
        _insn(_ALU64_MOV_X, dst=0, src=1),
        _insn(_EXIT),
        _insn(_ALU64_MOV_K, dst=0, imm=0),
        _insn(_EXIT),
    ])


def _bpf(cmd: int, attr: bytes) -> int:
    number = _SYS_BPF.get(os.uname().machine) if struct.calcsize("P") == 8 else None
    if number is None:
        raise BalanceUnavailable(errno.ENOSYS, f"no bpf() system call known for a {struct.calcsize('P') * 8}-bit "
                                               f"process on {os.uname().machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(number, cmd, buf, len(attr))
    if fd < 0:
        code = ctypes.get_errno()
        raise BalanceUnavailable(code, os.strerror(code))
    return int(fd)


class RoundRobin:
    """One loaded round-robin program and its counter, for a group of ``sockets`` sockets.

    Close it once attached: the group keeps its own reference to the program."""

    def __init__(self, sockets: int) -> None:
        self.map_fd = _bpf(_BPF_MAP_CREATE, struct.pack("<IIIII", _BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0).ljust(72, b"\0"))
        try:
            code = round_robin_program(self.map_fd, sockets)
            insns = ctypes.create_string_buffer(code, len(code))
            license_ = ctypes.create_string_buffer(b"GPL")
            log = ctypes.create_string_buffer(4096)
            attr = struct.pack("<IIQQIIQ", _BPF_PROG_TYPE_SOCKET_FILTER, len(code) // 8, ctypes.addressof(insns),
                               ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
            try:
                self.prog_fd = _bpf(_BPF_PROG_LOAD, attr.ljust(128, b"\0"))
            except BalanceUnavailable as exc:
                # The verifier's log ends with statistics ("processed 9 insns ..."); the line before
                # them says which instruction it refused and why.
                detail = [line for line in log.value.decode("ascii", "replace").strip().splitlines()
                          if line and not line.startswith(("processed ", "verification time"))]
                if detail:
                    raise BalanceUnavailable(exc.errno, f"{exc.strerror}: {detail[-1]}") from None
                raise
        except BaseException:
            os.close(self.map_fd)
            raise

    def attach(self, sock: socket.socket) -> None:
        """Make ``sock``'s SO_REUSEPORT group (every listener of its address) use this program."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, struct.pack("i", self.prog_fd))
        except OSError as exc:
            raise BalanceUnavailable(exc.errno, exc.strerror) from None

    def close(self) -> None:
        for fd in (self.prog_fd, self.map_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> RoundRobin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def listening_sockets(port: int) -> list[socket.socket]:
    """This process's listening TCP sockets on ``port`` (duplicates: close them after use).

    grpcio opens its listeners itself and does not hand them out, so they are found among the
    process's descriptors: sockets that accept connections, bound to ``port``."""
    targets: dict[str, int] = {}  # socket:[inode] -> a descriptor of it (listed before any dup is made)
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile, or the listing's own descriptor
            link = os.readlink(f"/proc/self/fd/{name}")
            if link.startswith("socket:"):
                targets.setdefault(link, int(name))
    found = []
    for link, fd in targets.items():
        try:
            copy = os.dup(fd)
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=copy)
        except OSError:  # (not a socket any more: the number was reused)
            os.close(copy)
            continue
        if os.readlink(f"/proc/self/fd/{sock.fileno()}") != link:  # the number was reused meanwhile
            sock.close()
            continue
        try:
            if (sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and sock.getsockname()[1] == port):
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found


def attach_round_robin(ports: list[int], sockets: int) -> dict[int, int]:
    """Attach a round-robin program over ``sockets`` workers to this process's listeners on each of
    ``ports`` (one program and counter per listener: gRPC and REST clients are dealt separately).
    Returns, per port, how many listeners now have one (0: none found, or more than one of this
    process in one group, which a count of workers cannot deal over); raises
    :class:`BalanceUnavailable` when the kernel refuses."""
    attached: dict[int, int] = {}
    for port in ports:
        found = listening_sockets(port)
        try:
            groups: dict[tuple[int, Any], list[socket.socket]] = {}
            for sock in found:  # listeners of one family and address share a SO_REUSEPORT group
                groups.setdefault((sock.family, sock.getsockname()[0]), []).append(sock)
            attached[port] = 0
            for members in groups.values():
                if len(members) != 1:
                    continue
                with RoundRobin(sockets) as program:
                    program.attach(members[0])
                attached[port] += 1
        finally:
            for sock in found:
                sock.close()
    return attached
