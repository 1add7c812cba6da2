"""The element writer's nfnetlink encoding, decoded by an independent parser (pyroute2).

The kernel accepting these batches is shown by the kernel tests (tests/lab/agent): every
element change there goes through this encoder.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nftsocket import nft_set_elem_list_msg

from filter_agent.drivers import nfnetlink as nl
from filter_agent.plan import Element, TableSpec, element_commands


def decode(command: nl.Command) -> Any:
    msg = nft_set_elem_list_msg(nl._message(command, 9))
    msg.decode()
    return msg


def elements(msg: Any) -> list[tuple[bytes, int | None, bytes | None]]:
    out = []
    for e in msg.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS"):
        data = e.get_attr("NFTA_SET_ELEM_DATA")
        out.append(
            (
                e.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE"),
                e.get_attr("NFTA_SET_ELEM_TIMEOUT"),
                None if data is None else data.get_attr("NFTA_DATA_VALUE"),
            )
        )
    return out


SPEC = TableSpec()


def test_map_add_pads_every_field_to_a_register() -> None:
    put = [Element("dnat4", ("udp", "203.0.113.1", 21126), ("10.77.0.10", 5998), 600)]
    (command,) = nl.encode_commands(element_commands(SPEC, put, ()))
    msg = decode(command)
    assert msg["header"]["type"] == (10 << 8) | 12  # NFNL_SUBSYS_NFTABLES, NEWSETELEM
    assert msg["header"]["flags"] & 0x400  # NLM_F_CREATE: add, not create (no EXCL)
    assert not msg["header"]["flags"] & 0x200  # NLM_F_EXCL
    assert msg["nfgen_family"] == 1  # NFPROTO_INET
    assert msg.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "sipwall"
    assert msg.get_attr("NFTA_SET_ELEM_LIST_SET") == "dnat4"
    key = bytes([17, 0, 0, 0, 203, 0, 113, 1]) + struct.pack(">H", 21126) + b"\0\0"
    data = bytes([10, 77, 0, 10]) + struct.pack(">H", 5998) + b"\0\0"
    assert elements(msg) == [(key, 600_000, data)]  # the timeout in milliseconds


def test_delete_sends_the_guard_then_the_bare_key() -> None:
    gone = [Element("in4", ("udp", "10.77.0.10", 4000, "203.0.113.20", 5000))]
    guard, delete = nl.encode_commands(element_commands(SPEC, (), gone))
    assert decode(guard)["header"]["type"] & 0xFF == 12
    msg = decode(delete)
    assert (guard.label, delete.label) == ("add element in4", "delete element in4")
    assert msg["header"]["type"] & 0xFF == 14  # DELSETELEM
    assert not msg["header"]["flags"] & 0x400
    key = bytes([17, 0, 0, 0, 10, 77, 0, 10, 0x0F, 0xA0, 0, 0, 203, 0, 113, 20, 0x13, 0x88, 0, 0])
    assert elements(msg) == [(key, None, None)]


def test_a_large_set_change_is_split_into_attributes_that_fit() -> None:
    put = [
        Element("in4a", ("udp", "10.77.0.10", 2000 + i, "198.51.100.1"), None, 60)
        for i in range(5000)
    ]
    commands = nl.encode_commands(element_commands(SPEC, put, ()))
    assert len(commands) > 1
    decoded = [decode(c) for c in commands]
    keys = [k for msg in decoded for k, _t, _d in elements(msg)]
    assert len(keys) == 5000
    assert [struct.unpack(">H", k[8:10])[0] for k in keys] == [2000 + i for i in range(5000)]


def _add_in4a(element: Any) -> Any:
    return {
        "add": {
            "element": {"family": "inet", "table": "sipwall", "name": "in4a", "elem": [element]}
        }
    }


@pytest.mark.parametrize(
    "command",
    [
        {"add": {"table": {"family": "inet", "name": "sipwall"}}},
        {"flush": {"element": {"family": "inet", "table": "sipwall", "name": "in4"}}},
        {"add": {"element": {"family": "inet", "table": "sipwall", "name": "other", "elem": []}}},
        {"add": {"element": {"family": "arp", "table": "sipwall", "name": "in4", "elem": []}}},
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "sipwall",
                    "name": "in4a",
                    "elem": [{"concat": ["udp", "10.77.0.10", 70000, "198.51.100.1"]}],
                }
            }
        },
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "sipwall",
                    "name": "in4a",
                    "elem": [{"concat": ["udp", "2001:db8::1", 4000, "198.51.100.1"]}],
                }
            }
        },
        *(
            _add_in4a(
                {
                    "elem": {
                        "val": {"concat": ["udp", "10.77.0.10", 4000, "198.51.100.1"]},
                        "timeout": timeout,
                    }
                }
            )
            for timeout in (True, 0, 1.5, "60")
        ),
        _add_in4a(  # a set element given map data
            [
                {"concat": ["udp", "10.77.0.10", 4000, "198.51.100.1"]},
                {"concat": ["10.77.0.10", 4000]},
            ]
        ),
    ],
)
def test_anything_but_our_element_changes_is_left_to_libnftables(command: Any) -> None:
    with pytest.raises(nl.NotElements):
        nl.encode_commands([command])


def test_the_kernel_text_of_an_error_is_read_past_the_capped_header() -> None:
    text = b"Could not process rule: No such file or directory\0"
    attr = struct.pack("=HH", 4 + len(text), 1) + text
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=i", -2) + struct.pack("=IHHII", 40, 0x0A0E, 5, 9, 0) + attr
    header = struct.pack("=IHHII", 16 + len(body), 2, 0x100 | 0x200, 9, 0)
    data = header + body
    assert nl._error_text(data, 0, len(data), 0x300) == text[:-1].decode()
    assert nl._error_text(data, 0, len(data), 0x100) is None
