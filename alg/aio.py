"""The ALG's only networking code: a thin asyncio shell around `ProxyCore`.

Per side it listens on UDP and/or TCP at the configured address. Every datagram or framed
stream message goes to `core.receive(...)`; every resulting `Send` leaves from the
socket of its side (responses to a TCP request go back on the connection it came on,
RFC 3261 §18.2.2); one `loop.call_at` timer follows `core.get_timer()`. The core never
blocks, so neither does the shell.

With media anchoring, one task per filter agent keeps its FCP event stream (WatchEvents)
open and hands every event to the media core's agent pool (`AgentPool.on_event`); a
stream that breaks counts against that agent's health and is reopened after a backoff.
An event saying a call's media is gone goes to the core (`ProxyCore.media_gone`), and the
BYEs with which it may end that call are sent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from alg.affinity import Affinity
from alg.call_steering import GroupSteering, SteeringError
from alg.cdr import Cdr
from alg.config import AlgConfig
from alg.connections import ConnectionTable
from alg.media.actions import AgentAction
from alg.media.agents import GroupGone
from alg.media.perform import AgentApi, Batched, coalesce, perform, perform_batch
from alg.proxy import ProxyCore
from alg.proxy_model import SIDES, Endpoint, Send, Side
from alg.sip import BadMessage, KeepAlivePing, MessageReceived, SipStreamReader
from alg.tls import TlsContexts, contexts, sip_identity_matches
from alg.workers import spread_at_random
from fcp.types import Event, EventKind, Session

log = logging.getLogger("sipwall.alg.transport")


# A burst (or a pause of the process) must not overflow the socket: the kernel's default
# ~208 KiB holds only a few hundred SIP datagrams. Kamailio asks for the same 4 MiB.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


# descriptors beyond the connections: sockets, the databases, logs, agents' channels
OPEN_FILES_RESERVE = 256


def _allow_open_files(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit): the
    usual soft 1024 would refuse connections long before [proxy] max_connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open files limited to %d by the hard limit: fewer than max_connections", target
        )


def _enlarge_receive_buffer(sock: socket.socket) -> None:
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER)
        except OSError:
            continue  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF is capped by rmem_max
        return


@functools.lru_cache(maxsize=4096)
def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@runtime_checkable
class AgentEvents(Protocol):
    """The part of `fcp.client.FcpClient` the event watch uses."""

    async def open_session(self, *, deadline: float | None = None) -> Session: ...

    def watch_events(self) -> AsyncIterator[Event]: ...


# asyncio reads one datagram per wake-up of the selector: under load every datagram
# costs an epoll_wait and a trip through the event loop. Having been woken, read what
# else is queued, up to this many (so timers and the other socket are not starved).
UDP_READ_BATCH = 32
UDP_MAX_DATAGRAM = 65_536

CONNECT_SECONDS = 5.0  # an outgoing TCP or TLS connection, handshake included
TLS_HANDSHAKE_SECONDS = 5.0  # either way: a peer that stalls it holds nothing longer


def _bound_udp_socket(
    host: str, port: int, workers: int = 1, *, spread: bool = True
) -> socket.socket | None:
    """A non-blocking UDP socket bound to a literal address (None for a name: asyncio
    then resolves and binds it, and reads one datagram per wake-up). With several
    workers, one of a SO_REUSEPORT group, which spreads datagrams at random unless told
    not to (`spread`: a stateful worker's socket joins its Call-ID steering instead,
    alg.call_steering)."""
    try:
        ((family, kind, proto, _, address),) = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE
        )[:1]
    except (socket.gaierror, ValueError):
        return None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        if workers > 1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if workers > 1 and spread:
            spread_at_random(sock, workers)
    except OSError:
        sock.close()
        raise
    return sock


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(
        self,
        side: Side,
        deliver: Callable[[bytes, Endpoint], None],
        sock: socket.socket | None = None,
    ) -> None:
        self.side = side
        self.deliver = deliver
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        side, deliver = self.side, self.deliver
        deliver(data, Endpoint(side, "UDP", str(addr[0]), int(addr[1])))
        sock = self.sock
        if sock is None:
            return
        for _ in range(UDP_READ_BATCH):
            try:
                data, addr = sock.recvfrom(UDP_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable, as asyncio reports it
                self.error_received(exc)
                return
            deliver(data, Endpoint(side, "UDP", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error on %s: %s", self.side, exc)  # e.g. ICMP port unreachable


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection (`kind`), framed by `SipStreamReader`. asyncio hands a
    TLS connection's protocol the decrypted bytes, after the handshake."""

    def __init__(
        self, shell: AlgShell, side: Side, number: int, kind: str = "TCP", inbound: bool = True
    ) -> None:
        self.shell = shell
        self.side = side
        self.number = number
        self.kind = kind
        self.inbound = inbound  # accepted by us, rather than opened by us
        self.admitted = False
        self.reader = SipStreamReader(shell.config.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.peer = Endpoint(side, kind, "", 0, number)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # asyncio's contract for Protocol
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        shell = self.shell
        source = str(host) if self.inbound else None
        if not shell.streams.admit(self.number, source, shell._loop.time()):
            log.debug("refused a %s connection from %s (connection limits)", self.kind, host)
            transport.abort()  # alg.connections: over the total or the per-source limit
            return
        self.admitted = True
        self.peer = Endpoint(self.side, self.kind, str(host), int(port), self.number)
        shell.connections[self.number] = self
        shell.by_peer[(self.side, self.kind, self.peer.host, self.peer.port)] = self

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        self.shell.streams.used(self.number, self.shell._loop.time())
        for event in self.reader.feed(data):
            if isinstance(event, MessageReceived):
                self.shell.deliver(event.message.raw, self.peer)
            elif isinstance(event, KeepAlivePing) and self.transport is not None:
                self.transport.write(b"\r\n")  # RFC 5626 §3.5.1 pong
            elif isinstance(event, BadMessage):
                if event.fatal:
                    log.info("closing %s: %s", self.peer, event.error.reason)
                    if self.transport is not None:
                        self.transport.close()
                    return
                self.shell.deliver(event.raw, self.peer)  # the core answers 400

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.shell.streams.closed(self.number)
        self.shell.connections.pop(self.number, None)
        key = (self.side, self.kind, self.peer.host, self.peer.port)
        if self.shell.by_peer.get(key) is self:
            del self.shell.by_peer[key]


class AlgShell:
    def __init__(
        self,
        config: AlgConfig,
        core: ProxyCore,
        on_calls: Callable[[list[Cdr]], None] | None = None,
        lookup: Callable[[str], Awaitable[None]] | None = None,
        agents: Mapping[str, AgentApi] | None = None,
        *,
        worker: tuple[int, int] | None = None,
        steering: Mapping[Side, GroupSteering] | None = None,
    ) -> None:
        self.config = config
        self.core = core
        self.on_calls = on_calls  # finished call records (CDRs), written by the caller
        self.lookup = lookup  # RFC 3263 resolution of a URI into the router's cache
        self.agents = agents or {}  # FCP clients by agent name, for the media core
        # worker (group, index) of several, stateful: calls owned by other workers are
        # handed over (alg.affinity)
        self.affinity = (
            Affinity(*worker, config.workers, core.stats, self.deliver)
            if worker is not None and config.mode == "stateful"
            else None
        )
        # the Call-ID steering of each side's UDP group, with our index (alg.call_steering)
        self.steering: dict[Side, tuple[GroupSteering, int]] = (
            {side: (group, worker[1]) for side, group in (steering or {}).items()}
            if worker is not None
            else {}
        )
        self.udp: dict[Side, asyncio.DatagramTransport] = {}
        self.servers: list[asyncio.Server] = []
        self.connections: dict[int, _Stream] = {}
        # admission and idleness of those connections (alg.connections); counters in the
        # core's stats, so they reach the stats file
        self.streams = ConnectionTable(config.connections, core.stats)
        self._sweeping: asyncio.TimerHandle | None = None
        # connections by (side, "TCP"/"TLS", host, port), for reuse (RFC 3261 §18.1.1),
        # and what waits for a connection being opened to such a peer
        self.by_peer: dict[tuple[Side, str, str, int], _Stream] = {}
        self._connecting: dict[tuple[Side, str, str, int], list[Send]] = {}
        # TLS contexts of the sides with "tls" in their transports (alg.tls)
        self.tls: dict[Side, TlsContexts] = {}
        for side in SIDES:
            settings = getattr(config, side).tls
            if settings is not None:
                self.tls[side] = contexts(settings)
                if not settings.verify:
                    log.warning(
                        "%s: TLS servers' certificates are NOT verified (tls_verify = false)",
                        side,
                    )
        self._numbers = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[None]] = set()
        # what a datagram's core call sent while its RPCs go out first (`deliver`); sent
        # before anything else is (`_dispatch`), so the order on the wire is the core's
        self._held: list[Send] = []

    async def start(self) -> None:
        if self.affinity is not None:  # listening before any datagram can be handed to us
            await self.affinity.start()
        for side in SIDES:
            side_config = getattr(self.config, side)
            address = (side_config.address, side_config.port)
            if "udp" in side_config.transports:
                steering = self.steering.get(side)
                sock = _bound_udp_socket(*address, self.config.workers, spread=steering is None)
                if sock is not None and steering is not None:
                    self._join_steering(sock, *steering)
                if sock is None:
                    transport, _ = await self._loop.create_datagram_endpoint(
                        self._datagram_factory(side, None), local_addr=address
                    )
                else:
                    transport, _ = await self._loop.create_datagram_endpoint(
                        self._datagram_factory(side, sock), sock=sock
                    )
                _enlarge_receive_buffer(transport.get_extra_info("socket"))
                self.udp[side] = transport
            if "tcp" in side_config.transports:
                server = await self._loop.create_server(
                    self._stream_factory(side), *address, reuse_address=True
                )
                self.servers.append(server)
            if side in self.tls:
                tls_port = side_config.tls.port
                server = await self._loop.create_server(
                    self._stream_factory(side, "TLS"),
                    side_config.address,
                    tls_port,
                    ssl=self.tls[side].server,
                    ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS,
                    reuse_address=True,
                )
                self.servers.append(server)
                log.info("listening on %s %s:%d tls", side, side_config.address, tls_port)
            log.info("listening on %s %s:%d %s", side, *address, side_config.transports)
        self._start_agent_watches()
        if self.servers:  # TCP or TLS listeners
            _allow_open_files(self.config.connections.max_total + OPEN_FILES_RESERVE)
        interval = self.config.connections.sweep_interval
        if interval is not None:
            self._sweeping = self._loop.call_later(interval, self._sweep, interval)

    def _sweep(self, interval: float) -> None:
        """Close the connections idle for [proxy] connection_idle_timeout."""
        for number in self.streams.idle(self._loop.time()):
            stream = self.connections.get(number)
            if stream is not None and stream.transport is not None:
                log.info("closing %s: idle", stream.peer)
                stream.transport.close()
        self._sweeping = self._loop.call_later(interval, self._sweep, interval)

    # --- agent event streams (one task per agent) ------------------------------------

    def _start_agent_watches(self) -> None:
        if self.core.media is None:
            return
        for name, api in self.agents.items():
            if isinstance(api, AgentEvents):
                task = self._loop.create_task(self._watch_agent(name, api))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _watch_agent(self, name: str, api: AgentEvents) -> None:
        """Keep agent `name`'s event stream open for as long as the shell runs."""
        media = self.core.media
        assert media is not None
        failures = 0
        while True:
            try:
                # (Re)learn the epoch first: after an agent restart the client refuses
                # calls until the session is opened again (PCP RFC 6887 §8.5).
                await api.open_session(deadline=media.pool.settings.deadline)
                async for event in api.watch_events():
                    failures = 0
                    started = event.kind is EventKind.WATCH_STARTED
                    level = logging.INFO if started else logging.WARNING
                    log.log(level, "agent %s: event %s %s", name, event.kind.value, event.message)
                    gone = media.pool.on_event(name, event)
                    if gone is not None:
                        self._media_gone(gone)
                reason = "stream ended"
            except Exception as exc:  # noqa: BLE001 - FcpError or a broken channel: retry
                reason = str(exc) or type(exc).__name__
            failures += 1
            media.pool.watch_broken(name, self._loop.time())
            delay = media.pool.watch_delay(failures)
            log.warning("agent %s: event stream down (%s); retry in %.1fs", name, reason, delay)
            await asyncio.sleep(delay)  # backoff before reopening, not a wait for a condition

    def _media_gone(self, gone: GroupGone) -> None:
        """A call's media is gone: the core may end the call; its BYEs leave now, outside
        the receive/result dispatch (as `_perform` does for an agent's answer)."""
        try:
            sends = self.core.media_gone(gone, self._loop.time())
        except Exception:  # the core must never crash the shell (nor break the stream)
            log.exception("core failed on %s", gone)
            return
        self._dispatch(sends)
        self._after_core()

    def _join_steering(self, sock: socket.socket, group: GroupSteering, index: int) -> None:
        """Our socket into slot `index` of its side's steering group; the count of sides
        steered is in the stats (0 on a kernel that refused: calls are handed over)."""
        try:
            group.join(sock, index)
            self.core.stats["affinity.steered_sides"] += 1
        except SteeringError as exc:
            log.warning("%s", exc)
        group.close()  # the supervisor keeps the group; our socket holds the program

    def _datagram_factory(self, side: Side, sock: socket.socket | None) -> Callable[[], _Datagrams]:
        deliver = self.deliver if self.affinity is None else self.affinity.route
        return lambda: _Datagrams(side, deliver, sock)

    def _stream_factory(
        self, side: Side, kind: str = "TCP", *, inbound: bool = True
    ) -> Callable[[], _Stream]:
        return lambda: _Stream(self, side, next(self._numbers), kind, inbound)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self.affinity is not None:
            self.affinity.close()
        for transport in self.udp.values():
            transport.close()
        for server in self.servers:
            server.close()
        for stream in list(self.connections.values()):
            if stream.transport is not None:
                stream.transport.close()
        for server in self.servers:
            await server.wait_closed()
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- core glue ----------------------------------------------------------------

    def deliver(self, data: bytes, source: Endpoint) -> None:
        media = self.core.media
        parked = media.stats["parked"] if media is not None else 0
        try:
            sends = self.core.receive(data, source, self._loop.time())
        except Exception:  # the core must never crash the shell; log and go on
            log.exception("core failed on a message from %s", source)
            return
        if (
            media is not None
            and media.stats["parked"] != parked
            and self._start_media_actions(first=self._release_held)
        ):
            # A message parked for the agent (an anchored offer): its Reserve leaves before
            # the 100 Trying and the timer's re-arming (~0.05-0.1 ms of a cold CPU, part of
            # the setup delay), which wait for the tasks' first steps (the RPCs written),
            # in the same order. What is not parked (a 200 whose pinholes are being
            # enabled) leaves at once, before the RPCs, as it did.
            self._held.extend(sends)
            return
        self._dispatch(sends)
        self._after_core()

    def _release_held(self) -> None:
        self._dispatch([])  # sends what is held
        self._after_core()

    def _start_lookups(self) -> None:
        for uri in self.core.take_lookups():
            task = self._loop.create_task(self._resolve(uri))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _resolve(self, uri: str) -> None:
        if self.lookup is not None:
            try:
                await self.lookup(uri)
            except Exception:  # a failed lookup must still resume (the core answers 503)
                log.exception("DNS lookup of %s failed", uri)
        self._dispatch(self.core.resume_lookup(uri, self._loop.time()))
        self._after_core()

    def _start_media_actions(self, first: Callable[[], None] | None = None) -> bool:
        """A task per agent action (their first steps send the RPCs, at the loop's next
        turn); then `first`, and the parked messages' preparation. True if any started."""
        media = self.core.media
        if media is None:
            return False
        started = False
        for work in coalesce(media.take_actions()):
            task = self._loop.create_task(self._perform(work))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            started = True
        if started and first is not None:
            self._loop.call_soon(first)
        if started and media.parked_count:
            # After the tasks' first steps, which send the RPCs: what the parked messages
            # need whatever the agent answers is done while it answers.
            self._loop.call_soon(self._prepare_parked)
        return started

    def _prepare_parked(self) -> None:
        media = self.core.media
        if media is None:
            return
        try:
            media.prepare_parked(self._loop.time())
        except Exception:  # the core must never crash the shell
            log.exception("media core failed preparing parked messages")

    async def _perform(self, work: AgentAction | Batched) -> None:
        agent = work[0].agent if isinstance(work, tuple) else work.agent
        api = self.agents.get(agent)
        if api is None:
            log.error("no FCP client for agent %s", agent)
            return  # the media core's deadline fails the action over
        # never raises FcpError: it becomes Failed
        if isinstance(work, tuple):
            results = await perform_batch(work, api)
        else:
            results = [await perform(work, api)]
        for result in results:
            self._dispatch(self.core.media_result(result, self._loop.time()))
        self._after_core()

    def _after_core(self) -> None:
        self._start_media_actions()
        self._start_lookups()
        self._drain_calls()
        self._arm_timer()

    def _drain_calls(self) -> None:
        if self.core.finished_calls and self.on_calls is not None:
            try:
                self.on_calls(self.core.take_finished_calls())
            except OSError:
                log.exception("cannot write call records")

    def _on_timer(self) -> None:
        self._timer = None
        try:
            sends = self.core.handle_timer(self._loop.time())
        except Exception:
            log.exception("core failed in a timer")
            sends = []
        self._dispatch(sends)
        self._after_core()

    def _arm_timer(self) -> None:
        deadline = self.core.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _dispatch(self, sends: list[Send]) -> None:
        if self._held:
            held, self._held = self._held, []
            sends = held + sends
        for send in sends:
            target = send.to
            if not _is_address(target.host):
                log.warning("not an address (resolve names first): %s dropped", target.host)
                continue
            if target.transport == "UDP":
                transport = self.udp.get(target.side)
                if transport is None:
                    log.warning("no UDP socket on the %s side: dropped", target.side)
                    continue
                transport.sendto(send.data, (target.host, target.port))
            else:
                self._send_stream(send)

    def _send_stream(self, send: Send) -> None:
        target = send.to
        stream = None
        if target.connection is not None:
            stream = self.connections.get(target.connection)
        key = (target.side, target.transport, target.host, target.port)
        waiting = self._connecting.get(key)
        if stream is None and waiting is not None:
            # one connection per peer (RFC 3261 §18.1.1 reuse): a CANCEL right after
            # its INVITE waits for the connection the INVITE opens, and follows it (even
            # if the connection is up already but what waits has not been written yet)
            waiting.append(send)
            return
        if stream is None:
            stream = self.by_peer.get(key)
        if stream is not None and stream.transport is not None:
            stream.transport.write(send.data)
            self.streams.used(stream.number, self._loop.time())
            return
        if target.transport == "TLS" and target.side not in self.tls:
            # never downgrade a hop that asked for TLS to plain TCP (RFC 3261 §26.2.1)
            log.warning(
                "no TLS on the %s side: not sending to %s:%d over TLS",
                target.side,
                target.host,
                target.port,
            )
            self._undelivered(send)
            return
        self._connecting[key] = [send]
        task = self._loop.create_task(self._connect_and_send(key, target.name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _undelivered(self, send: Send) -> None:
        """Tell the core a request could not be sent (RFC 3261 §16.9: as if a 503)."""
        try:
            sends = self.core.transport_failed(send, self._loop.time())
        except Exception:  # the core must never crash the shell
            log.exception("core failed on a transport error towards %s", send.to)
            return
        self._dispatch(sends)
        self._after_core()

    async def _connect_and_send(
        self, key: tuple[Side, str, str, int], name: str | None = None
    ) -> None:
        """Open the connection to `key`'s peer, then send what waits for it, in order.
        Over TLS the server must prove `name`, the SIP domain its address was resolved
        from (RFC 5922 §4; also sent as SNI), or else the address we were given."""
        side, transport, host, port = key
        tls: dict[str, Any] = {}
        if transport == "TLS":
            tls = {
                "ssl": self.tls[side].client,
                "server_hostname": name or host,  # SNI for a name (never for an address)
                "ssl_handshake_timeout": TLS_HANDSHAKE_SECONDS,
            }
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(
                    self._stream_factory(side, transport, inbound=False),
                    host,
                    port,
                    local_addr=(getattr(self.config, side).address, 0),
                    **tls,
                ),
                timeout=CONNECT_SECONDS,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.warning("cannot connect to %s:%d over %s: %s", host, port, transport, exc)
            for send in self._connecting.pop(key, []):
                self._undelivered(send)
            return
        if transport == "TLS" and self.tls[side].verify and protocol.transport is not None:
            cert = protocol.transport.get_extra_info("peercert") or {}
            if not sip_identity_matches(cert, name or host):
                log.warning(
                    "%s:%d over TLS: its certificate does not name %s (RFC 5922 §7)",
                    host, port, name or host,
                )  # fmt: skip
                protocol.transport.close()
                for send in self._connecting.pop(key, []):
                    self._undelivered(send)
                return
        sends = self._connecting.pop(key, [])
        if protocol.transport is not None:
            for send in sends:
                protocol.transport.write(send.data)
