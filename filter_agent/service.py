"""`AgentService`: the filter agent as an FCP backend — a thin asyncio shell over the
sans-I/O `Engine`, with write-ahead persistence, timers, events and table watching.

Theory of operation
-------------------
Every mutating RPC runs synchronously on the event loop, start to finish: idempotency
lookup, engine batch (one libnftables transaction), one SQLite transaction, answer. Nothing
awaits in between, so RPCs are serialized without a lock and the engine, the kernel and
the store never disagree at an await point. Measured on the lab machine a reservation is
a few hundred microseconds of libnftables plus ~100 µs of SQLite, so running them on the
loop costs less than an executor hop would. The slow kernel reads never run on the loop:
the counter dump (`observe`) is made by a child process that returns only the elements
with traffic (filter_agent/counter_worker.py), and the table watch asks the kernel for
our table alone over nfnetlink (kernel_io.TableProbe), not through libnftables, whose
cache would hold every element. Latching (latching.py) handles queued packets on the
loop the same way as RPCs: synchronously, start to finish.

Timers (aioquic style): `Engine.next_timer()` says when `expire` has work; a background
task sleeps until then (or until the next counter poll), and a mutation that creates an
earlier deadline wakes it. The kernel enforces every expiry by itself (element timeouts),
so timer precision only affects events and bookkeeping, never forwarding.

Ownership (FCP §4): every call carries the caller's identity; the engine scopes all ids
by owner. `fcp.backend.ADMIN_OWNER` is the operator: it sees everything, group ids are
shown as "<owner>/<group>", it may change lifetimes and release (the owner then gets
REMOVED_BY_ADMIN), and it may not create objects.

Idempotency is handled here, over FCP values (`fcp.idempotency.IdempotencyCache`), not in
the engine: the first result is replayed byte-identical and the records expire after a
TTL; they are persisted so a retry across an agent restart still replays.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from fcp import convert
from fcp import types as f
from fcp.backend import ADMIN_OWNER
from fcp.errors import FcpError, Reason, not_found
from fcp.idempotency import IdempotencyCache
from fcp.v1 import fcp_pb2 as pb
from filter_agent import model as m
from filter_agent import mutations, ops, snapshot
from filter_agent.allocator import PortUsage
from filter_agent.driver import NftDriver
from filter_agent.engine import ConntrackFlusher, Engine
from filter_agent.engine import Event as EngineEvent
from filter_agent.engine import EventKind as EngineEventKind
from filter_agent.errors import AgentError, DriverError
from filter_agent.events import EventHub
from filter_agent.latching import AgentLatching
from filter_agent.plan import Element, TableSpec
from filter_agent.port_watch import PortWatch
from filter_agent.queries import Queries
from filter_agent.recovery import Recovery, recover
from filter_agent.store import IdempotencyRecord, Loaded, Store, StoreTxn
from filter_agent.translate import View, agent_error, fingerprint, stored_fingerprint
from filter_agent.wiring import ServiceSettings, build_engine
from sipwall.heap import HeapPolicy

log = logging.getLogger("sipwall.agent.service")

# How often records kept by time (idempotency answers, port quarantine) are swept, so
# memory and the store stay ~ttl x rate, not the run's total. Each second, as the counters
# are read: at 400 calls/s ~1,600 answers expire per second, and SQLite deletes them at
# ~1.4 us a row, so a sweep holds the loop ~2 ms (every 10 s it would be ~23 ms at once).
RECORD_SWEEP_SECONDS = 1.0

Results = tuple[f.BatchResult, ...]


def _answered(blob: bytes) -> Results:
    """A remembered answer (`AgentService._mutate`), as the results it was made of."""
    answer = pb.BatchResponse.FromString(blob)
    return tuple(convert.batch_result_from_proto(r) for r in answer.results)


class AgentService:
    """Implements `fcp.backend.FirewallBackend` over an `Engine`; see the module docstring.

    Build with `AgentService.open(...)` (recovers state), then `await start()` for the
    timers, `await drain()` and `await close()` to stop.
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        settings: ServiceSettings,
        recovery: Recovery,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        reader: Callable[[], Awaitable[Iterable[Element]]] | None = None,
        table_probe: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.recovery = recovery
        self._clock = clock
        self._wall = wall
        self._reader = reader
        self._probe = table_probe or engine.driver.table_exists
        self._epoch = recovery.epoch
        # Remembered answers are kept as the bytes the store keeps (~150 B), decoded only
        # when a retry comes: as objects they took ~1 KB each, and an agent at 400 cps
        # remembers ~1,200 operations a second for the whole window.
        self._idem: IdempotencyCache[bytes] = IdempotencyCache(settings.idempotency_ttl)
        for record in sorted(recovery.idempotency, key=lambda r: r.expires_at):
            self._idem.remember(
                record.owner,
                record.key,
                stored_fingerprint(record.fingerprint),
                record.result,
                record.expires_at - settings.idempotency_ttl,
            )
        self._incarnations: dict[str, str] = {}
        self.events = EventHub(self._epoch, wall)
        self.latching: AgentLatching | None = None  # set by main when the kernel can queue
        self._draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._scheduled = math.inf
        # a short idempotency window (labs, tests) is swept within a quarter of it
        self._sweep_every = min(RECORD_SWEEP_SECONDS, settings.idempotency_ttl / 4)
        self._next_sweep = clock() + self._sweep_every
        self.rebuilds = 0  # times the table was rebuilt after vanishing
        self.heap = HeapPolicy()  # main installs it in the agent process (sipwall.heap)
        self._port_watch = PortWatch()

    @classmethod
    def open(
        cls,
        settings: ServiceSettings,
        driver: NftDriver,
        store: Store,
        loaded: Loaded | None,
        lost: str | None,
        *,
        boot_id: str,
        flusher: ConntrackFlusher | None = None,
        spec: TableSpec | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        reader: Callable[[], Awaitable[Iterable[Element]]] | None = None,
        table_probe: Callable[[], bool] | None = None,
    ) -> AgentService:
        """Recover from the store and the kernel (see `filter_agent.recovery`)."""
        engine = build_engine(settings, driver, spec=spec, flusher=flusher, rng=rng)
        recovery = recover(
            engine,
            store,
            loaded,
            lost,
            boot_id=boot_id,
            now=clock(),
            rng=rng or random.SystemRandom(),
        )
        # Build the UDP port spaces now: the first reservation must not pay for it.
        for address in settings.addresses:
            engine.allocator.free_ports(address, m.Protocol.UDP, clock())
        return cls(
            engine,
            store,
            settings,
            recovery,
            clock=clock,
            wall=wall,
            reader=reader,
            table_probe=table_probe,
        )

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._timer_loop(), name="sipwall-timers"),
            asyncio.create_task(self._table_loop(), name="sipwall-table-watch"),
        ]
        if self.latching is not None:
            self.latching.start(asyncio.get_running_loop())

    async def drain(self) -> None:
        """Refuse new reservations and tell every watcher (AGENT_DRAINING)."""
        self._draining = True
        self.events.publish(None, f.EventKind.AGENT_DRAINING, message="agent is shutting down")

    async def close(self) -> None:
        """Stop timers and event streams. Kernel state is left as it is: media keeps
        flowing and the next agent start picks the state up again."""
        if self.latching is not None:
            self.latching.close()  # undecided packets are accepted (address-only)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        self.events.close()
        self.store.close()

    # ---- FirewallBackend: sessions and events --------------------------------------------

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def capabilities(self) -> f.Capabilities:
        s = self.settings
        pool = f.Pool(
            s.pool_name,
            f.IpVersion.V4,
            tuple(ipaddress.IPv4Address(a) for a in s.addresses),
            s.port_min,
            s.port_max,
        )
        return f.Capabilities(
            ip_versions=(f.IpVersion.V4,),
            pools=(pool,),
            rtp_pair=True,
            rtcp_mux=True,
            block=True,
            max_block_size=s.max_block,
            max_lifetime_seconds=int(s.max_lifetime),
            latching=True,  # remote port may be absent: address-only pinhole (RFC 7362)
        )

    async def open_session(self, owner: str, request: f.SessionRequest) -> f.Session:
        previous = self._incarnations.get(owner)
        if request.release_previous_state and owner != ADMIN_OWNER:
            groups = sorted(
                {b.group for b in snapshot.all_bindings(self.engine) if b.owner == owner}
            )
            for group in groups:
                self._release_group(owner, group)
            self._idem.forget_owner(owner)
        self._incarnations[owner] = request.incarnation_id
        return f.Session(self.capabilities, self._epoch, owner, request.incarnation_id, previous)

    def _release_group(self, owner: str, group: str) -> None:
        request = f.GroupLifetimeChange(group, 0)
        self._mutate(owner, None, request, lambda now: self._apply(owner, [request], now))

    def watch_events(self, owner: str) -> AsyncIterator[f.Event]:
        return self.events.watch(owner)

    # ---- FirewallBackend: mutations -------------------------------------------------------

    async def reserve_binding(self, owner: str, request: f.BindingRequest) -> f.Binding:
        result = self._mutate_one(owner, request)
        assert isinstance(result, f.Binding)
        return result

    async def enable_rule(self, owner: str, request: f.RuleRequest) -> f.Rule:
        result = self._mutate_one(owner, f.standalone(request))
        assert isinstance(result, f.Rule)
        return result

    async def change_lifetime(self, owner: str, request: f.LifetimeChange) -> f.LifetimeGrant:
        result = self._mutate_one(owner, request)
        assert isinstance(result, f.LifetimeGrant)
        return result

    async def change_group_lifetime(
        self, owner: str, request: f.GroupLifetimeChange
    ) -> f.GroupLifetimeGrant:
        result = self._mutate_one(owner, request)
        assert isinstance(result, f.GroupLifetimeGrant)
        return result

    async def batch(self, owner: str, request: f.BatchRequest) -> Sequence[f.BatchResult]:
        if owner == ADMIN_OWNER:
            raise FcpError(Reason.NOT_AUTHORIZED, "admin identities do not batch")
        return self._mutate(
            owner,
            request.idempotency_key,
            request,
            lambda now: self._apply(owner, list(request.operations), now),
        )

    def _mutate_one(self, owner: str, request: f.BatchOperation) -> f.BatchResult:
        self._refuse_admin_create(owner, (request,))
        if owner == ADMIN_OWNER:
            actual, request = mutations.admin_target(self.engine, request)
            results = self._mutate(
                owner,
                request.idempotency_key,
                request,
                lambda now: self._apply(actual, [request], now, by_admin=True),
            )
        else:
            results = self._mutate(
                owner,
                request.idempotency_key,
                request,
                lambda now: self._apply(owner, [request], now),
            )
        return results[0]

    def _refuse_admin_create(self, owner: str, operations: Iterable[f.BatchOperation]) -> None:
        if owner == ADMIN_OWNER and any(
            isinstance(op, f.BindingRequest | f.RuleRequest) for op in operations
        ):
            raise FcpError(Reason.NOT_AUTHORIZED, "admin identities do not create objects")

    def _mutate(
        self,
        owner: str,
        key: str | None,
        request: object,
        apply: Callable[[float], tuple[Results, Callable[[StoreTxn], None]]],
    ) -> Results:
        """Idempotency, engine, store, in that order, with no await in between."""
        now = self._clock()
        fp = fingerprint(request)
        seen = self._idem.lookup(owner, key, fp, now)
        if seen is not None:
            return _answered(seen)
        results, persist = apply(now)
        record = blob = None
        if key is not None:
            blob = pb.BatchResponse(
                results=[convert.batch_result_to_proto(r) for r in results]
            ).SerializeToString()
            record = IdempotencyRecord(owner, key, fp, blob, now + self.settings.idempotency_ttl)
        with self.store.transaction() as txn:
            persist(txn)
            if record is not None:
                txn.put_idempotency(record)
        if blob is not None:
            self._idem.remember(owner, key, fp, blob, now)
        return results

    def _view(self, now: float, *, admin: bool = False) -> View:
        return View(self._wall() - self._clock(), now, admin)

    def _apply(
        self, owner: str, requests: list[f.BatchOperation], now: float, *, by_admin: bool = False
    ) -> tuple[Results, Callable[[StoreTxn], None]]:
        """Run FCP operations as one engine batch; returns results and the store writes."""
        engine = self.engine
        eops: list[ops.Op] = []
        before: dict[str, m.Binding | m.Rule | None] = {}
        group_sizes: list[tuple[int, int]] = []
        held: list[tuple[tuple[f.Binding, ...], tuple[f.Rule, ...]]] = []
        for index, request in enumerate(requests):
            if isinstance(request, f.GroupLifetimeChange):
                held.append(self._holdings(owner, request, now))
            try:
                eops.append(
                    mutations.engine_op(
                        engine,
                        owner,
                        request,
                        before,
                        group_sizes,
                        pool=self.settings.pool_name,
                        draining=self._draining,
                    )
                )
            except FcpError as exc:
                raise (exc.with_operation_index(index) if len(requests) > 1 else exc) from None
        try:
            raw = engine.batch(owner, eops, now)
        except AgentError as exc:
            error = agent_error(exc)
            if len(requests) > 1 and not isinstance(exc, DriverError):
                failing = mutations.failing_index(engine, owner, eops, now)
                if failing is not None:
                    error = error.with_operation_index(failing)
            raise error from None
        view = self._view(now)
        results: list[f.BatchResult] = []
        sizes = iter(group_sizes)
        holdings = iter(held)
        for request, result in zip(requests, raw, strict=True):
            if isinstance(result, m.Binding):
                before.setdefault(result.id, None)
                results.append(
                    Queries(engine, self.settings.pool_name, owner, view).binding(result)
                )
            elif isinstance(result, m.Rule) and isinstance(request, f.RuleRequest):
                before.setdefault(result.id, None)
                results.append(view.rule(result, snapshot.rule_counters(engine, result.id)))
            elif isinstance(request, f.LifetimeChange):
                assert not isinstance(result, m.Group)
                expires = None if result is None else view.wall(result.expires_at)
                granted = 0 if result is None else view.remaining(result.expires_at)
                results.append(f.LifetimeGrant(granted, expires))
            else:
                nb, nr = next(sizes)
                gone_bindings, gone_rules = next(holdings)
                expires = None if not isinstance(result, m.Group) else result.expires_at
                granted = 0 if expires is None else view.remaining(expires)
                results.append(
                    f.GroupLifetimeGrant(
                        granted,
                        None if expires is None else view.wall(expires),
                        nb,
                        nr,
                        gone_bindings,
                        gone_rules,
                    )
                )
        self._wake_if_earlier(raw)
        if by_admin:
            for old in mutations.removed(engine, before):
                self.events.publish(
                    owner,
                    f.EventKind.REMOVED_BY_ADMIN,
                    group_id=old.group,
                    binding_id=old.id if isinstance(old, m.Binding) else old.binding_id,
                    rule_id=old.id if isinstance(old, m.Rule) else None,
                    message="removed by an operator",
                )
        deadline = now + self.settings.quarantine
        return tuple(results), lambda txn: mutations.persist(engine, txn, before, deadline)

    def _holdings(
        self, owner: str, request: f.GroupLifetimeChange, now: float
    ) -> tuple[tuple[f.Binding, ...], tuple[f.Rule, ...]]:
        """A release reports what the group held, with counters, read before the engine
        drops them: the caller's call record then needs no List* round trips."""
        if request.lifetime_seconds != 0:
            return (), ()
        queries = Queries(self.engine, self.settings.pool_name, owner, self._view(now))
        members = sorted(
            self.engine.list_bindings(owner, request.group_id),
            key=lambda b: snapshot.id_number(b.id),
        )
        rules = [r for b in members for r in snapshot.rules_of(self.engine, b.id)]
        return (
            tuple(queries.binding(b) for b in members),
            tuple(queries.rule(r) for r in sorted(rules, key=lambda r: snapshot.id_number(r.id))),
        )

    # ---- FirewallBackend: queries ---------------------------------------------------------

    async def list_bindings(self, owner: str, group_id: str | None = None) -> Sequence[f.Binding]:
        return self._queries(owner).list_bindings(group_id)

    async def list_rules(
        self, owner: str, group_id: str | None = None, binding_id: str | None = None
    ) -> Sequence[f.Rule]:
        return self._queries(owner).list_rules(group_id, binding_id)

    async def list_groups(self, owner: str) -> Sequence[f.Group]:
        return self._queries(owner).list_groups()

    async def get_rule(self, owner: str, rule_id: str) -> f.Rule:
        return self._queries(owner).get_rule(rule_id)

    async def get_binding(self, owner: str, binding_id: str) -> f.Binding:
        return self._queries(owner).get_binding(binding_id)

    async def get_group(self, owner: str, group_id: str) -> f.Group:
        return self._queries(owner).get_group(group_id)

    async def get_external_addresses(
        self, owner: str, pool: str | None = None
    ) -> Sequence[f.ExternalAddress]:
        if pool is not None and pool != self.settings.pool_name:
            raise not_found("pool", pool)
        usages: dict[str, list[f.PortUsage]] = {}
        for address, protocol, u in self.port_usages():
            usages.setdefault(address, []).append(
                f.PortUsage(f.TransportProtocol(protocol.value), u.total, u.bound, u.quarantined)
            )
        return [
            f.ExternalAddress(address, p.name, p.ip_version, tuple(usages[str(address)]))
            for p in self.capabilities.pools
            for address in p.external_addresses
        ]

    def port_usages(self) -> list[tuple[str, m.Protocol, PortUsage]]:
        """Every public address's port usage, per protocol, now."""
        now = self._clock()
        allocator = self.engine.allocator
        return [
            (address, protocol, allocator.usage(address, protocol, now))
            for address in self.settings.addresses
            for protocol in m.Protocol
        ]

    def _queries(self, owner: str) -> Queries:
        view = self._view(self._clock(), admin=owner == ADMIN_OWNER)
        return Queries(self.engine, self.settings.pool_name, owner, view)

    # ---- timers, counters, table watch ---------------------------------------------------

    def _wake_if_earlier(self, results: Iterable[object]) -> None:
        for result in results:
            expires = getattr(result, "expires_at", None)
            if expires is not None and expires < self._scheduled:
                self._wakeup.set()
                return

    async def _timer_loop(self) -> None:
        next_observe = self._clock()
        due = self.next_timer()  # O(objects): computed once per round
        while True:
            wake = min(next_observe, due)
            self._scheduled = wake
            delay = max(0.0, wake - self._clock())
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except TimeoutError:
                pass
            now = self._clock()
            try:
                if now >= next_observe:
                    started = self._clock()
                    await self._observe()
                    took = self._clock() - started
                    # A full counter dump is O(elements); with 100,000 pinholes it takes
                    # long enough to matter, so its duty cycle is capped at 20 %.
                    next_observe = self._clock() + max(self.settings.observe_interval, 4 * took)
                if self._next_sweep <= self._clock():
                    self.sweep_records(self._clock())
                expiring = self.engine.next_timer()  # O(objects): once, twice if due
                if expiring is not None and expiring <= self._clock():
                    self.expire_now()
                    expiring = self.engine.next_timer()
                due = self._with_sweep(expiring)
            except (AgentError, OSError):
                log.exception("timer work failed; retrying in a second")
                await asyncio.sleep(1.0)
                due = self.next_timer()

    async def _observe(self) -> None:
        """Kernel counters -> engine (last-seen, idle), changed ones -> store. The dump is
        made elsewhere (`counter_worker`: a child process) and holds only the elements
        with traffic, so the loop's share is small."""
        totals = None
        if self._reader is not None:
            totals = self.engine.rule_totals(await self._reader())
        self.observe_now(totals)

    def observe_now(self, totals: dict[str, tuple[int, int]] | None = None) -> None:
        now = self._clock()
        if totals is None:
            changed = self.engine.observe(now)
        else:
            changed = self.engine.apply_totals(totals, now)
        if changed:
            with self.store.transaction() as txn:
                txn.put_counters(
                    [(rid, snapshot.rule_counters(self.engine, rid)) for rid in changed]
                )
        self._check_ports()

    def _check_ports(self) -> None:
        for alarm in self._port_watch.check(self.port_usages()):
            u = alarm.usage
            counts = (
                f"{alarm.address} {alarm.protocol.value}: {u.free} of {u.total} ports free "
                f"({u.bound} bound, {u.quarantined} quarantined)"
            )
            if alarm.low:
                log.warning(
                    "%s; reservations fail with NO_PORTS when none is left: add addresses "
                    "or ports to the pool (README: sizing a pool)",
                    counts,
                )
            else:
                log.info("%s; enough again", counts)

    def next_timer(self) -> float:
        """When the timer next has something to do: an object's deadline (`expire_now`),
        or the next sweep of the records kept by time (`sweep_records`)."""
        return self._with_sweep(self.engine.next_timer())

    def _with_sweep(self, expiring: float | None) -> float:
        return self._next_sweep if expiring is None else min(expiring, self._next_sweep)

    def sweep_records(self, now: float) -> None:
        """Forget idempotency records and quarantined ports whose time is over, in memory
        and in the store: the one place they are forgotten. Calls released by their owner
        (the ALG's BYE) never expire, so this must not wait for an expiry: memory and the
        database would grow with every call in between."""
        self._idem.expire(now)
        with self.store.transaction() as txn:
            txn.prune(now)
        self._next_sweep = now + self._sweep_every

    def expire_now(self) -> list[EngineEvent]:
        """Close what timed out or idled out; persist; tell the owners."""
        now = self._clock()
        bindings = {b.id: b for b in snapshot.all_bindings(self.engine)}
        rules = {r.id: r for r in snapshot.all_rules(self.engine)}
        events = self.engine.expire(now)
        if not events:
            return events
        by_binding: dict[str, list[m.Rule]] = {}
        for r in rules.values():
            by_binding.setdefault(r.binding_id, []).append(r)
        before: dict[str, m.Binding | m.Rule | None] = {}
        for event in events:
            obj = bindings.get(event.object_id) or rules.get(event.object_id)
            before[event.object_id] = obj
            if isinstance(obj, m.Binding):
                for r in by_binding.get(obj.id, []):
                    before[r.id] = r
        with self.store.transaction() as txn:  # records kept by time: `sweep_records`
            mutations.persist(self.engine, txn, before, now + self.settings.quarantine)
        for event in events:
            rule = rules.get(event.object_id)
            kind = f.EventKind.IDLE if event.kind is EngineEventKind.IDLE else f.EventKind.EXPIRED
            self.events.publish(
                event.owner,
                kind,
                group_id=event.group,
                binding_id=rule.binding_id if rule is not None else event.object_id,
                rule_id=event.object_id if rule is not None else None,
            )
        return events

    async def _table_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.table_poll_interval)
            self.heap.tick(self._clock())
            try:
                self.check_table()
            except (AgentError, OSError):
                log.exception("could not rebuild the nftables table; will retry")

    def check_table(self) -> bool:
        """If the table vanished (firewall reload, `nft flush ruleset`), rebuild it with
        every live element. Returns whether it had to."""
        if self._probe():
            return False
        if not self.engine.reconcile(self._clock()):
            return False
        self.rebuilds += 1
        if self.latching is not None:
            self.latching.reinstall()  # the rebuilt latch_queue is empty (address-only)
        log.warning(
            "nftables table %s %s was deleted behind our back; rebuilt with %d objects",
            self.engine.spec.family,
            self.engine.spec.name,
            snapshot.object_count(self.engine),
        )
        return True
