"""Kernel steering of a stateful proxy's datagrams to the worker that owns their call.

With `[proxy] workers = N` in stateful mode, a call's state lives in the worker
`alg.affinity.owner` names for its Call-ID, and a datagram that lands elsewhere is handed
over on a unix socket: one more write, read and event-loop turn for N-1 of every N
datagrams, a fifth of the stateful proxy's CPU per call with two workers
(`bench/proxy_cps.py`). This module makes the kernel deliver each datagram to its owner
in the first place, so that the hand-off is left for what the kernel could not place.

How: an eBPF program of type `BPF_PROG_TYPE_SK_REUSEPORT` attached to the worker
sockets' SO_REUSEPORT group (socket(7) `SO_ATTACH_REUSEPORT_EBPF`) runs for every
datagram before a socket is chosen. It scans the start of the UDP payload for the
Call-ID header field (RFC 3261 §7.3.1 and §20.8, long or compact form, any case), hashes
its value as `alg.affinity.owner` does (Adler-32, then Fibonacci hashing) and selects
worker `owner`'s socket from a `BPF_MAP_TYPE_REUSEPORT_SOCKARRAY` map with
`bpf_sk_select_reuseport`. The map is indexed by worker, so the choice does not depend
on the order in which the workers bound their sockets or restarted (the group's own
socket array is reordered whenever a socket leaves). When the program finds no Call-ID
within `SCAN_BYTES`, or the owner's slot is empty (the worker is restarting), it selects
nothing and the kernel falls back to its 4-tuple hash; the receiving worker's
`owner` check then hands the datagram over as before. The kernel's choice is only an
optimisation: correctness stays with `alg.affinity`.

The supervisor creates one map and one program per UDP group (one per side), before it
starts the workers, and passes their descriptors down; each worker puts its socket in its
slot and attaches the program (the same program, attached again, changes nothing). A
kernel that refuses (no BPF, not privileged) leaves the workers on random spreading with
hand-offs, and says so once.

The program is written here as eBPF instructions (`linux/bpf.h`, `Documentation/bpf/
standardization/instruction-set.rst`) because the project ships no compiler for BPF; it
is about 80 instructions. Its loop is bounded by `SCAN_BYTES`, which keeps the verifier's
walk (one state per byte offset and scanner state) far below its limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import socket
import struct
from dataclasses import dataclass
from typing import Final

from alg.call_hash import CALL_HASH_BASIS, CALL_HASH_MIXER, CALL_HASH_PRIME
from alg.errors import AlgError

# bpf(2) by architecture (asm/unistd.h); elsewhere steering is refused, not guessed
_SYS_BPF: Final = {"x86_64": 321, "aarch64": 280}
SO_ATTACH_REUSEPORT_EBPF: Final = 52  # asm-generic/socket.h

# bpf(2) commands, map and program types (linux/bpf.h)
_MAP_CREATE, _MAP_UPDATE_ELEM, _MAP_LOOKUP_ELEM, _PROG_LOAD = 0, 2, 1, 5
_OBJ_GET_INFO_BY_FD, _ENABLE_STATS, _STATS_RUN_TIME = 15, 32, 0
_MAP_TYPE_REUSEPORT_SOCKARRAY: Final = 20
_PROG_TYPE_SK_REUSEPORT: Final = 21
_FUNC_SK_SELECT_REUSEPORT: Final = 82
_PSEUDO_MAP_FD: Final = 1
_SK_PASS: Final = 1

# How far into the payload the program looks for the Call-ID. A request through a few
# proxies carries its Call-ID within the first few hundred bytes; past this, the hand-off
# places it.
SCAN_BYTES: Final = 1024

# alg.call_hash: FNV-1a (32 bits) of the value, then Fibonacci hashing.
_FNV_BASIS, _FNV_PRIME = CALL_HASH_BASIS, CALL_HASH_PRIME
_FIBONACCI: Final = CALL_HASH_MIXER


class SteeringError(AlgError):
    """The kernel refused to create or attach the steering program."""


# --- eBPF instruction encoding (linux/bpf.h, linux/bpf_common.h) -----------------------

_LDX, _STX, _ALU, _JMP, _ALU64 = 0x01, 0x03, 0x04, 0x05, 0x07
_W, _B, _DW = 0x00, 0x10, 0x18
_MEM = 0x60
_K, _X = 0x00, 0x08
_ADD, _MUL, _OR, _RSH, _MOD, _XOR, _MOV = 0x00, 0x20, 0x40, 0x70, 0x90, 0xA0, 0xB0
_JA, _JEQ, _JGT, _JGE, _JNE, _CALL, _EXIT = 0x00, 0x10, 0x20, 0x30, 0x50, 0x80, 0x90

# registers: r0 return/scratch, r1-r5 arguments, r6-r9 callee-saved, r10 frame pointer
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)


@dataclass(frozen=True, slots=True)
class _Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int | str = 0  # a label name until assembled
    imm: int = 0


def _alu64(op: int, dst: int, imm: int) -> _Insn:
    return _Insn(_ALU64 | op | _K, dst, 0, 0, imm)


def _alu64_reg(op: int, dst: int, src: int) -> _Insn:
    return _Insn(_ALU64 | op | _X, dst, src)


def _alu32(op: int, dst: int, imm: int) -> _Insn:
    return _Insn(_ALU | op | _K, dst, 0, 0, imm)


def _jump(op: int, dst: int, imm: int, label: str) -> _Insn:
    return _Insn(_JMP | op | _K, dst, 0, label, imm)


def _jump_reg(op: int, dst: int, src: int, label: str) -> _Insn:
    return _Insn(_JMP | op | _X, dst, src, label)


def _goto(label: str) -> _Insn:
    return _Insn(_JMP | _JA, 0, 0, label)


def _assemble(items: list[_Insn | str]) -> bytes:
    """Encode `items` (instructions, and label names marking the next instruction's
    position); a jump's offset counts instructions from the one after it. The 64-bit
    immediate load takes two slots."""
    labels: dict[str, int] = {}
    position = 0
    for item in items:
        if isinstance(item, str):
            labels[item] = position
        else:
            position += 2 if item.code == 0x18 else 1
    out = bytearray()
    position = 0
    for item in items:
        if isinstance(item, str):
            continue
        off = item.off
        if isinstance(off, str):
            off = labels[off] - position - 1
        out += struct.pack("<BBhi", item.code, item.dst | item.src << 4, off, item.imm)
        position += 1
        if item.code == 0x18:  # the second half of ld_imm64 holds the upper 32 bits
            out += struct.pack("<BBhi", 0, 0, 0, 0)
            position += 1
    return bytes(out)


# Scanner states: looking for a line start; at a line start; inside "call-id" having
# matched its first 1..6 characters; after the name; after the colon; in the value.
_SEEK, _LINE, _NAME_END, _COLON, _VALUE = 0, 1, 8, 9, 10
_CALL_ID_REST: Final = b"all-id"  # states 2..7 expect these after the "c"


def program(map_fd: int, workers: int) -> bytes:
    """The steering program for one reuseport group whose sockarray map is `map_fd`."""
    if not 1 <= workers <= 0xFFFF:
        raise ValueError(f"workers must be 1..65535, not {workers}")
    code: list[_Insn | str] = [
        _alu64_reg(_MOV, R6, R1),  # the context, for the helper call at the end
        _Insn(_LDX | _MEM | _DW, R2, R6, 0),  # sk_reuseport_md.data: the UDP header
        _Insn(_LDX | _MEM | _DW, R3, R6, 8),  # .data_end (the linear part)
        _alu64(_ADD, R2, 8),  # the SIP message after the 8-byte UDP header
        _alu64(_MOV, R4, 0),  # offset
        _alu64(_MOV, R5, _SEEK),  # scanner state
        _alu32(_MOV, R7, _signed32(_FNV_BASIS)),  # the hash of the value
        "next",
        _jump(_JGE, R4, SCAN_BYTES, "ended"),
        _alu64_reg(_MOV, R9, R2),
        _alu64_reg(_ADD, R9, R4),
        _alu64_reg(_MOV, R0, R9),
        _alu64(_ADD, R0, 1),
        _jump_reg(_JGT, R0, R3, "ended"),
        _Insn(_LDX | _MEM | _B, R0, R9, 0),
        _alu64(_ADD, R4, 1),
        # the common case first: a byte in the middle of some line
        _jump(_JNE, R5, _SEEK, "states"),
        _jump(_JNE, R0, ord("\n"), "next"),
        _alu64(_MOV, R5, _LINE),
        _goto("next"),
        "states",
        _jump(_JEQ, R5, _VALUE, "value"),
        _jump(_JEQ, R5, _LINE, "line"),
        _jump(_JEQ, R5, _NAME_END, "name_end"),
        _jump(_JEQ, R5, _COLON, "colon"),
        # states 2..7: the next character of "call-id", letters in either case
        _alu64_reg(_MOV, R1, R0),
    ]
    for state, char in enumerate(_CALL_ID_REST, start=2):
        letter = chr(char).isalpha()  # "-" is compared as it is
        code += [
            _jump(_JNE, R5, state, f"not{state}"),
            *([_alu64(_OR, R1, 0x20)] if letter else []),
            _jump(_JNE, R1, char | 0x20 if letter else char, "miss"),
            _alu64(_MOV, R5, state + 1 if state < 7 else _NAME_END),
            _goto("next"),
            f"not{state}",
        ]
    code += [
        _goto("miss"),  # no other state exists
        "line",  # the first character of a header field name
        _alu64_reg(_MOV, R1, R0),
        _alu64(_OR, R1, 0x20),
        _jump(_JNE, R1, ord("c"), "line_i"),
        _alu64(_MOV, R5, 2),
        _goto("next"),
        "line_i",
        _jump(_JNE, R1, ord("i"), "miss"),  # RFC 3261 §7.3.3: "i" is Call-ID
        _alu64(_MOV, R5, _NAME_END),
        _goto("next"),
        "name_end",  # optional whitespace, then the colon
        _jump(_JEQ, R0, ord(" "), "next"),
        _jump(_JEQ, R0, ord("\t"), "next"),
        _jump(_JNE, R0, ord(":"), "miss"),
        _alu64(_MOV, R5, _COLON),
        _goto("next"),
        "colon",  # whitespace before the value; an empty value places nothing
        _jump(_JEQ, R0, ord(" "), "next"),
        _jump(_JEQ, R0, ord("\t"), "next"),
        _jump(_JEQ, R0, ord("\r"), "unplaced"),
        _jump(_JEQ, R0, ord("\n"), "unplaced"),
        _alu64(_MOV, R5, _VALUE),
        "value_byte",  # FNV-1a: h = (h xor byte) * prime, modulo 2^32
        _alu64_reg(_XOR, R7, R0),
        _alu32(_MUL, R7, _FNV_PRIME),
        _goto("next"),
        "value",  # the value ends at whitespace or the line end
        _jump(_JEQ, R0, ord(" "), "hashed"),
        _jump(_JEQ, R0, ord("\t"), "hashed"),
        _jump(_JEQ, R0, ord("\r"), "hashed"),
        _jump(_JNE, R0, ord("\n"), "value_byte"),
        "miss",  # not the Call-ID: a newline starts a line, anything else is in one
        _alu64(_MOV, R5, _SEEK),
        _jump(_JNE, R0, ord("\n"), "next"),
        _alu64(_MOV, R5, _LINE),
        _goto("next"),
        "ended",  # the scan limit or the end of the data: a value running to it counts
        _jump(_JNE, R5, _VALUE, "unplaced"),
        "hashed",
        _alu32(_MUL, R7, _signed32(_FIBONACCI)),  # 32-bit: the low half of the product
        _alu32(_RSH, R7, 16),
        _alu32(_MOD, R7, workers),
        _Insn(_STX | _MEM | _W, R10, R7, -4),
        _alu64_reg(_MOV, R1, R6),
        _Insn(0x18, R2, _PSEUDO_MAP_FD, 0, map_fd),  # ld_imm64 r2 = the map
        _alu64_reg(_MOV, R3, R10),
        _alu64(_ADD, R3, -4),
        _alu64(_MOV, R4, 0),
        _Insn(_JMP | _CALL, 0, 0, 0, _FUNC_SK_SELECT_REUSEPORT),
        # whatever the helper said: an empty slot selects nothing, and then the kernel
        # uses its hash, as for an unplaced datagram
        "unplaced",
        _alu64(_MOV, R0, _SK_PASS),
        _Insn(_JMP | _EXIT),
    ]
    return _assemble(code)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


# --- bpf(2) ---------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(command: int, attr: bytes) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"no bpf(2) number known for {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr, len(attr))
    result = int(_libc.syscall(number, command, buffer, len(attr)))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def _create_map(slots: int) -> int:
    # key: the worker index (u32); value: a socket (a descriptor in, a cookie out: u64)
    return _bpf(_MAP_CREATE, struct.pack("<IIIII", _MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, slots, 0))


def _load(insns: bytes) -> int:
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")

    def attempt(log_level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack(
            "<IIQQIIQII",
            _PROG_TYPE_SK_REUSEPORT,
            len(insns) // 8,
            ctypes.addressof(code),
            ctypes.addressof(license),
            log_level,
            len(log) if log is not None else 0,
            ctypes.addressof(log) if log is not None else 0,
            0,
            0,
        )
        return _bpf(_PROG_LOAD, attr)

    try:
        return attempt(0, None)
    except OSError as exc:
        # again with the verifier's statistics (level 4: a summary, not a walk through
        # every instruction), so that the refusal says why
        log = ctypes.create_string_buffer(1 << 12)
        try:
            attempt(4, log)
        except OSError:
            pass
        said = " ".join(log.value.decode("ascii", "replace").split())
        raise SteeringError(f"the kernel refused the steering program: {exc} ({said})") from exc


def _map_element(command: int, map_fd: int, index: int, value: int = 0) -> None:
    """Update (a socket's descriptor in) or look up (its cookie) slot `index` of a map."""
    key = ctypes.c_uint32(index)
    cell = ctypes.c_uint64(value)
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key), ctypes.addressof(cell), 0)
    _bpf(command, attr)


@dataclass(frozen=True, slots=True)
class GroupSteering:
    """The map and program of one reuseport group, as descriptors this process holds."""

    map_fd: int
    program_fd: int
    workers: int

    @classmethod
    def create(cls, workers: int) -> GroupSteering:
        try:
            map_fd = _create_map(workers)
        except OSError as exc:
            raise SteeringError(f"cannot create a reuseport socket map: {exc}") from exc
        try:
            program_fd = _load(program(map_fd, workers))
        except BaseException:
            os.close(map_fd)
            raise
        return cls(map_fd, program_fd, workers)

    def join(self, sock: socket.socket, index: int) -> None:
        """Put `sock` (bound, SO_REUSEPORT) in slot `index` and attach the program to
        its group."""
        try:
            _map_element(_MAP_UPDATE_ELEM, self.map_fd, index, sock.fileno())
            sock.setsockopt(
                socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, struct.pack("i", self.program_fd)
            )
        except OSError as exc:
            raise SteeringError(f"cannot steer worker {index}'s socket: {exc}") from exc

    def slot_taken(self, index: int) -> bool:
        """Whether slot `index` holds a socket (a lookup answers its cookie)."""
        try:
            _map_element(_MAP_LOOKUP_ELEM, self.map_fd, index)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def descriptors(self) -> tuple[int, int]:
        return self.map_fd, self.program_fd

    def close(self) -> None:
        for fd in (self.program_fd, self.map_fd):
            try:
                os.close(fd)
            except OSError:
                pass


# --- the program's cost (bench/call_steering.py) ---------------------------------------

# struct bpf_prog_info (linux/bpf.h): run_time_ns and run_cnt, counted while statistics
# are enabled
_INFO_SIZE, _RUN_TIME_AT = 208, 192


def counting_runs() -> int:
    """A descriptor that makes the kernel count every BPF program's runs and run time
    until it is closed (BPF_ENABLE_STATS: no sysctl is changed)."""
    return _bpf(_ENABLE_STATS, struct.pack("<I", _STATS_RUN_TIME))


def runs(program_fd: int) -> tuple[int, int]:
    """(runs, nanoseconds spent) of a program, as counted since `counting_runs`."""
    info = ctypes.create_string_buffer(_INFO_SIZE)
    _bpf(_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", program_fd, _INFO_SIZE, ctypes.addressof(info)))
    run_time_ns, run_count = struct.unpack_from("<QQ", info.raw, _RUN_TIME_AT)
    return run_count, run_time_ns
