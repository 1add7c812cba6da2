"""TCP/TLS connection limits and idle closing (alg.connections), in the table with an
explicit clock and through the running shell on loopback sockets."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from alg.aio import AlgShell
from alg.assemble import assemble
from alg.config import ConfigError, parse_config
from alg.connections import (
    CLOSED_IDLE,
    REFUSED_SOURCE,
    REFUSED_TOTAL,
    ConnectionLimits,
    ConnectionTable,
)
from alg.proxy_model import Endpoint, Send
from labs.sipp_runner import free_port


def test_per_source_and_total_limits_refuse_only_accepted_connections() -> None:
    table = ConnectionTable(ConnectionLimits(max_total=4, max_per_source=2))
    assert table.admit(1, "192.0.2.1", 0.0) and table.admit(2, "192.0.2.1", 0.0)
    assert not table.admit(3, "192.0.2.1", 0.0)  # a third from the same host
    assert table.admit(4, "192.0.2.2", 0.0)
    assert table.admit(6, None, 0.0)  # ours (outgoing): never refused, but counted
    assert not table.admit(5, "192.0.2.3", 0.0)  # four in all
    assert table.admit(9, None, 0.0)  # even beyond the total
    table.closed(9)
    assert len(table) == 4
    assert (table.stats[REFUSED_SOURCE], table.stats[REFUSED_TOTAL]) == (1, 1)
    table.closed(1)
    table.closed(3)  # refused ones are not in the table: closing them changes nothing
    assert table.admit(7, "192.0.2.1", 0.0)  # room again for that host
    assert not table.admit(8, "192.0.2.4", 0.0)  # four in all again


def test_idle_connections_are_reported_once_and_traffic_keeps_them() -> None:
    table = ConnectionTable(ConnectionLimits(idle_timeout=10.0))
    table.admit(1, "192.0.2.1", 0.0)
    table.admit(2, None, 0.0)
    table.used(1, 8.0)
    assert table.idle(9.9) == []
    assert table.idle(10.0) == [2]
    assert table.idle(17.9) == []  # 2 is not reported again while it closes
    assert table.idle(18.0) == [1]
    assert table.stats[CLOSED_IDLE] == 2
    table.closed(1)
    table.closed(2)
    assert len(table) == 0
    assert table.admit(3, "192.0.2.1", 20.0)  # the source's count went back to zero


def test_no_idle_timeout_never_closes() -> None:
    limits = ConnectionLimits(idle_timeout=0)
    table = ConnectionTable(limits)
    table.admit(1, "192.0.2.1", 0.0)
    assert table.idle(1e9) == [] and limits.sweep_interval is None
    assert ConnectionLimits(idle_timeout=20).sweep_interval == 5.0
    assert ConnectionLimits().sweep_interval == 60.0


def config_text(proxy: str, port: int = 5060) -> str:
    return f"""
[inside]
address = "127.0.0.1"
port = {port}
transports = ["tcp"]
[outside]
address = "127.0.0.17"
port = {port}
transports = ["tcp"]
[proxy]
inside_networks = ["127.0.0.0/28"]
{proxy}
"""


def test_connection_options() -> None:
    config = parse_config(tomllib.loads(config_text("")))
    assert config.connections == ConnectionLimits(4096, 64, 3600.0)
    text = "max_connections = 10\nmax_connections_per_source = 2\nconnection_idle_timeout = 0"
    assert parse_config(tomllib.loads(config_text(text))).connections == ConnectionLimits(
        10, 2, 0.0
    )
    for bad, key in (
        ("max_connections = 0", "max_connections"),
        ("max_connections_per_source = true", "max_connections_per_source"),
        ("connection_idle_timeout = -1", "connection_idle_timeout"),
    ):
        with pytest.raises(ConfigError, match=rf"\[proxy\]\.{key}"):
            parse_config(tomllib.loads(config_text(bad)))


@pytest_asyncio.fixture
async def shell() -> AsyncIterator[AlgShell]:
    port = free_port("127.0.0.1")
    limits = "max_connections_per_source = 2\nconnection_idle_timeout = 0.4"
    config = parse_config(tomllib.loads(config_text(limits, port)))
    services = assemble(config)
    running = AlgShell(config, services.core)
    await running.start()
    try:
        yield running
    finally:
        await running.close()
        services.close()


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the ALG closes the connection (EOF) within `within` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:  # an aborted connection
        return True


@pytest.mark.asyncio
async def test_the_shell_refuses_a_third_connection_and_closes_idle_ones(
    shell: AlgShell,
) -> None:
    port = shell.config.inside.port
    first = await asyncio.open_connection("127.0.0.1", port)
    second = await asyncio.open_connection("127.0.0.1", port)
    third = await asyncio.open_connection("127.0.0.1", port)
    assert await closed_by_peer(third[0], 2.0)
    assert shell.core.stats[REFUSED_SOURCE] == 1
    # the first keeps talking (RFC 5626 CRLF keep-alives, each answered), the second
    # says nothing: only the second is closed for idleness
    pongs = 0
    for _ in range(8):  # 8 x 0.1 s: twice the idle timeout
        first[1].write(b"\r\n\r\n")
        await first[1].drain()
        pongs += len(await asyncio.wait_for(first[0].readexactly(2), 2.0)) // 2
        await asyncio.sleep(0.1)  # the keep-alive period under test, not a wait
    assert pongs == 8
    assert await closed_by_peer(second[0], 1.0)
    assert not await closed_by_peer(first[0], 0.05)
    assert shell.core.stats[CLOSED_IDLE] >= 1
    assert await closed_by_peer(first[0], 2.0)  # once silent, it goes too
    assert len(shell.connections) == 0 and len(shell.streams) == 0
    for _, writer in (first, second, third):
        writer.close()


@pytest.mark.asyncio
async def test_sends_to_a_peer_being_connected_share_one_connection_in_order(
    shell: AlgShell,
) -> None:
    accepted: list[asyncio.StreamReader] = []
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(reader)
        writers.append(writer)

    port = free_port("127.0.0.2")
    server = await asyncio.start_server(on_connect, "127.0.0.2", port)
    try:
        peer = Endpoint("inside", "TCP", "127.0.0.2", port)
        # three messages to a peer we have no connection to, back to back (an INVITE,
        # its CANCEL, ...): one connection, opened once, carrying them in order
        shell._dispatch([Send(peer, b"one\r\n"), Send(peer, b"two\r\n")])
        shell._dispatch([Send(peer, b"three\r\n")])
        await until(lambda: len(accepted) == 1)
        data = b""
        while data.count(b"\r\n") < 3:
            data += await asyncio.wait_for(accepted[0].read(100), 2.0)
        assert data == b"one\r\ntwo\r\nthree\r\n"
        assert len(accepted) == 1 and len(shell.connections) == 1
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Wait for `condition`, checking at every turn of the loop, at most `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
