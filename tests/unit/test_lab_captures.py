"""The lab's classic-pcap readers (labs/anchor_lab.py): SIP datagrams and the TCP segments
that carry data, from frames written here byte by byte."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from typing import Any

from labs.anchor_lab import TcpSegment, read_pcap, read_tcp_segments

INVITE = (
    b"INVITE sip:bob@203.0.113.20 SIP/2.0\r\nVia: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bKx\r\n"
    b"From: <sip:alice@example.com>;tag=abc\r\nTo: <sip:bob@example.com>\r\n"
    b"Call-ID: 1@10.77.0.10\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
)


def _ipv4(proto: int, src: bytes, dst: bytes, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, src, dst)
    return header + payload


def _udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def _tcp(sport: int, dport: int, data: bytes, *, options: int = 12) -> bytes:
    """A TCP segment with `options` bytes of options (the data offset counts them)."""
    offset = (20 + options) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, offset << 4, 0x18, 65535, 0, 0)
    return header + b"\x01" * options + data


def _pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # Ethernet
    for t, ip in frames:
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        sec, usec = int(t), round((t - int(t)) * 1e6)
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def test_sip_datagrams_and_tcp_data_segments_are_read_from_one_capture(tmp_path: Path) -> None:
    alice, gw, lo = bytes([10, 77, 0, 10]), bytes([10, 77, 0, 1]), bytes([127, 0, 0, 1])
    path = tmp_path / "lo.pcap"
    _pcap(
        path,
        [
            (100.000001, _ipv4(17, alice, gw, _udp(5060, 5060, INVITE))),
            (100.000250, _ipv4(6, lo, lo, _tcp(40000, 7700, b"r" * 120))),  # the request
            (100.000260, _ipv4(6, lo, lo, _tcp(7700, 40000, b""))),  # a pure ACK
            (100.001400, _ipv4(6, lo, lo, _tcp(7700, 40000, b"a" * 90, options=0))),
        ],
    )
    [sip] = read_pcap(path)
    assert (sip.src, sip.dst, sip.method, sip.from_tag, sip.cseq_method) == (
        "10.77.0.10",
        "10.77.0.1",
        "INVITE",
        "abc",
        "INVITE",
    )
    assert abs(sip.t - 100.000001) < 1e-6
    segments = read_tcp_segments(path)
    assert [(s.sport, s.dport, s.length) for s in segments] == [
        (40000, 7700, 120),
        (7700, 40000, 90),
    ]
    assert all(isinstance(s, TcpSegment) for s in segments)
    assert abs(segments[1].t - 100.0014) < 1e-6


def test_a_missing_or_foreign_file_reads_as_nothing(tmp_path: Path) -> None:
    assert read_pcap(tmp_path / "absent.pcap") == []
    (tmp_path / "text.pcap").write_text("not a capture")
    assert read_tcp_segments(tmp_path / "text.pcap") == []


def _alg_cps() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "alg_cps.py"
    spec = importlib.util.spec_from_file_location("alg_cps_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_fcp_split_takes_the_reserve_and_the_last_answer_before_the_invite_leaves() -> None:
    bench = _alg_cps()
    gw_in = {("a", "INVITE"): 10.0, ("b", "INVITE"): 20.0, ("c", "INVITE"): 30.0}
    gw_out = {("a", "INVITE"): 10.003, ("b", "INVITE"): 20.003}  # c never left
    segments = [
        TcpSegment(9.5, 40000, 7700, 200),  # an earlier call's operation
        TcpSegment(10.001, 40000, 7700, 150),  # a's Reserve
        TcpSegment(10.0012, 7700, 40000, 40),  # a WINDOW_UPDATE: too small to count
        TcpSegment(10.0024, 7700, 40000, 180),  # a's answer
        TcpSegment(20.0005, 40000, 7700, 150),  # b's Reserve, never answered in time
        TcpSegment(20.004, 7700, 40000, 180),
    ]
    pre, rpc, post = bench.fcp_split(gw_in, gw_out, segments)
    assert [round(x, 3) for x in pre] == [1.0]
    assert [round(x, 3) for x in rpc] == [1.4]
    assert [round(x, 3) for x in post] == [0.6]
