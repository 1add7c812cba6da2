"""The typed FCP API: frozen, self-validating values that mirror the `fcp.v1` messages.

Both ends speak these: the ALG hands requests to `FcpClient`, the server hands the same
values to a `FirewallBackend`. Requests validate themselves on construction (h11 style) and
raise `FcpError(MALFORMED)` naming the proto field, so a bad request fails the same way in
the client, before it is sent, and in the server, before the backend sees it.

Field names follow the proto. Unset proto scalars become `None` where "absent" has a
meaning of its own (remote port absent = latch, RFC 7362; no suggested port; no idle
timeout). Times are float seconds on the backend's clock (wall clock on the wire); lifetimes
are whole seconds as in MIDCOM (RFC 5189 §2.1.8) and PCP (RFC 6887 §7.1).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fcp.errors import malformed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ID_LENGTH = 128
MAX_BATCH_OPERATIONS = 64


class IpVersion(enum.Enum):
    V4 = 4
    V6 = 6


class TransportProtocol(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


class BindingKind(enum.Enum):
    SINGLE = "single"  # one port (rtcp-mux, RFC 5761)
    RTP_PAIR = "rtp_pair"  # even RTP port P and RTCP P+1 (RFC 3550 §11)
    BLOCK = "block"  # block_size consecutive ports


class Direction(enum.Enum):
    """Seen from the inside, as MIDCOM's policy rule direction (RFC 5189 §3.1.2)."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    BIDIRECTIONAL = "bidirectional"


class EventKind(enum.Enum):
    WATCH_STARTED = "watch_started"
    EXPIRED = "expired"
    IDLE = "idle"
    REMOVED_BY_ADMIN = "removed_by_admin"
    EXTERNAL_ADDRESS_CHANGED = "external_address_changed"
    AGENT_DRAINING = "agent_draining"


class LifetimeTarget(enum.Enum):
    RULE = "rule"
    BINDING = "binding"


# ---- validation helpers ---------------------------------------------------------------


def check_id(field_name: str, value: str) -> None:
    """Ids and keys: 1..128 printable characters without spaces."""
    if not value:
        raise malformed(field_name, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise malformed(field_name, f"longer than {MAX_ID_LENGTH} characters")
    # str.isprintable() is False for every whitespace character except the ASCII space
    # (controls are category Cc, separators Z*), so this is "printable and no whitespace"
    # without a Python-level loop over the characters: it runs for every id of every call.
    if not value.isprintable() or " " in value:
        raise malformed(field_name, "must be printable characters without spaces")


def check_port(field_name: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise malformed(field_name, f"port {port} out of range 1..65535")


def check_lifetime(field_name: str, seconds: int, *, allow_zero: bool) -> None:
    if seconds < 0:
        raise malformed(field_name, f"lifetime {seconds} is negative")
    if seconds == 0 and not allow_zero:
        raise malformed(field_name, "lifetime must be positive")


def _check_key(field_name: str, key: str | None) -> None:
    if key is not None:
        check_id(field_name, key)


# ---- session --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    name: str
    ip_version: IpVersion
    external_addresses: tuple[IPAddress, ...]
    port_min: int = 1024
    port_max: int = 65535

    def __post_init__(self) -> None:
        check_id("name", self.name)
        check_port("port_min", self.port_min)
        check_port("port_max", self.port_max)
        if self.port_min > self.port_max:
            raise malformed("port_min", "greater than port_max")
        for address in self.external_addresses:
            if address.version != self.ip_version.value:
                raise malformed("external_addresses", f"{address} is not {self.ip_version}")


@dataclass(frozen=True)
class Capabilities:
    ip_versions: tuple[IpVersion, ...]
    pools: tuple[Pool, ...]
    rtp_pair: bool
    rtcp_mux: bool
    block: bool
    max_block_size: int
    max_lifetime_seconds: int
    latching: bool


@dataclass(frozen=True)
class SessionRequest:
    incarnation_id: str
    release_previous_state: bool = False

    def __post_init__(self) -> None:
        check_id("incarnation_id", self.incarnation_id)


@dataclass(frozen=True)
class Session:
    capabilities: Capabilities
    epoch: int
    owner: str
    incarnation_id: str
    previous_incarnation_id: str | None = None


# ---- common ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    address: IPAddress
    port: int

    def __post_init__(self) -> None:
        check_port("port", self.port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Counters:
    packets: int = 0
    bytes: int = 0
    last_seen: float | None = None  # None: no packet seen yet


# ---- bindings -------------------------------------------------------------------------


@dataclass(frozen=True)
class BindingRequest:
    """Reserve public port(s) for an inside endpoint (MIDCOM PRR, PCP MAP)."""

    group_id: str
    internal: Endpoint
    protocol: TransportProtocol
    kind: BindingKind
    lifetime_seconds: int
    block_size: int = 0  # BLOCK only
    suggested_external_port: int | None = None
    prefer_failure: bool = False
    idempotency_key: str | None = None
    pool: str | None = None

    def __post_init__(self) -> None:
        check_id("group_id", self.group_id)
        check_lifetime("lifetime_seconds", self.lifetime_seconds, allow_zero=False)
        if self.kind is BindingKind.BLOCK:
            if self.block_size < 1:
                raise malformed("block_size", f"block of {self.block_size} ports")
        elif self.block_size != 0:
            raise malformed("block_size", f"only for BLOCK bindings, not {self.kind.name}")
        if self.internal.port + self.port_count - 1 > 65535:
            raise malformed("internal.port", "port range runs past 65535")
        if self.suggested_external_port is not None:
            check_port("suggested_external_port", self.suggested_external_port)
        if self.prefer_failure and self.suggested_external_port is None:
            raise malformed("prefer_failure", "needs a suggested_external_port")
        _check_key("idempotency_key", self.idempotency_key)
        if self.pool is not None:
            check_id("pool", self.pool)

    @property
    def port_count(self) -> int:
        if self.kind is BindingKind.SINGLE:
            return 1
        if self.kind is BindingKind.RTP_PAIR:
            return 2
        return self.block_size


@dataclass(frozen=True)
class Binding:
    binding_id: str
    group_id: str
    internal: Endpoint
    protocol: TransportProtocol
    kind: BindingKind
    external_address: IPAddress
    external_ports: tuple[int, ...]
    lifetime_seconds: int  # granted
    expires_at: float
    pool: str
    counters: Counters = field(default_factory=Counters)

    @property
    def external(self) -> Endpoint:
        """The first external endpoint (the RTP port of a pair)."""
        return Endpoint(self.external_address, self.external_ports[0])


# ---- rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleRequest:
    """Open a pinhole from a binding to one remote peer (MIDCOM PER)."""

    binding_id: str
    direction: Direction
    remote_address: IPAddress
    lifetime_seconds: int
    remote_port: int | None = None  # None: latch on the first packet (RFC 7362)
    max_idle_seconds: int | None = None
    idempotency_key: str | None = None
    # In a batch only, instead of binding_id: index of an earlier BindingRequest of it.
    binding_ref: int | None = None

    def __post_init__(self) -> None:
        if self.binding_ref is None:
            check_id("binding_id", self.binding_id)
        elif self.binding_id:
            raise malformed("binding_ref", "give binding_id or binding_ref, not both")
        elif self.binding_ref < 0:
            raise malformed("binding_ref", "must not be negative")
        check_lifetime("lifetime_seconds", self.lifetime_seconds, allow_zero=False)
        if self.remote_port is not None:
            check_port("remote_port", self.remote_port)
        if self.max_idle_seconds is not None and self.max_idle_seconds <= 0:
            raise malformed("max_idle_seconds", "must be positive (absent: no idle timeout)")
        _check_key("idempotency_key", self.idempotency_key)


@dataclass(frozen=True)
class Rule:
    rule_id: str
    binding_id: str
    group_id: str
    direction: Direction
    remote_address: IPAddress
    remote_port: int | None
    max_idle_seconds: int | None
    lifetime_seconds: int
    expires_at: float
    counters: Counters = field(default_factory=Counters)


# ---- lifetimes ------------------------------------------------------------------------


@dataclass(frozen=True)
class LifetimeChange:
    """New lifetime for one rule or binding; 0 releases (MIDCOM PLC, PCP lifetime 0)."""

    target: LifetimeTarget
    target_id: str
    lifetime_seconds: int
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        check_id(f"{self.target.value}_id", self.target_id)
        check_lifetime("lifetime_seconds", self.lifetime_seconds, allow_zero=True)
        _check_key("idempotency_key", self.idempotency_key)


@dataclass(frozen=True)
class LifetimeGrant:
    lifetime_seconds: int  # 0: released
    expires_at: float | None  # None: released


@dataclass(frozen=True)
class GroupLifetimeChange:
    """New lifetime for everything in a group; 0 releases the call (MIDCOM GLC)."""

    group_id: str
    lifetime_seconds: int
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        check_id("group_id", self.group_id)
        check_lifetime("lifetime_seconds", self.lifetime_seconds, allow_zero=True)
        _check_key("idempotency_key", self.idempotency_key)


@dataclass(frozen=True)
class GroupLifetimeGrant:
    lifetime_seconds: int
    expires_at: float | None
    bindings: int  # members affected
    rules: int
    # A release (lifetime 0) reports what the group held, with final counters; empty for
    # a positive lifetime (the objects live on: List* shows them).
    released_bindings: tuple[Binding, ...] = ()
    released_rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Group:
    group_id: str
    external_address: IPAddress | None
    binding_ids: tuple[str, ...]
    rule_ids: tuple[str, ...]
    counters: Counters
    expires_at: float | None


# ---- batch, addresses, events ---------------------------------------------------------

BatchOperation = BindingRequest | RuleRequest | LifetimeChange | GroupLifetimeChange
BatchResult = Binding | Rule | LifetimeGrant | GroupLifetimeGrant


@dataclass(frozen=True)
class BatchRequest:
    operations: tuple[BatchOperation, ...]
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if not self.operations:
            raise malformed("operations", "a batch needs at least one operation")
        if len(self.operations) > MAX_BATCH_OPERATIONS:
            raise malformed("operations", f"more than {MAX_BATCH_OPERATIONS} operations")
        for index, operation in enumerate(self.operations):
            if operation.idempotency_key is not None:
                raise malformed(
                    f"operations[{index}].idempotency_key",
                    "must be empty inside a batch (the batch key covers it)",
                )
            ref = getattr(operation, "binding_ref", None)
            if ref is not None and not (
                ref < index and isinstance(self.operations[ref], BindingRequest)
            ):
                raise malformed(
                    f"operations[{index}].binding_ref",
                    "must be the index of an earlier reserve_binding operation",
                )
        _check_key("idempotency_key", self.idempotency_key)


def standalone(request: RuleRequest) -> RuleRequest:
    """An EnableRule outside a batch: `binding_ref` means nothing there."""
    if request.binding_ref is not None:
        raise malformed("binding_ref", "only inside a Batch (use binding_id)")
    return request


def resolve_ref(operation: BatchOperation, results: Sequence[object]) -> BatchOperation:
    """`operation` with its `binding_ref` replaced by the id of the binding that the
    referenced earlier operation reserved (`results`: the batch's results so far)."""
    if not isinstance(operation, RuleRequest) or operation.binding_ref is None:
        return operation
    binding = results[operation.binding_ref]
    assert isinstance(binding, Binding), "BatchRequest checked the reference"
    return replace(operation, binding_id=binding.binding_id, binding_ref=None)


@dataclass(frozen=True)
class PortUsage:
    """How one address's ports of one protocol are used (fcp.proto PortUsage)."""

    protocol: TransportProtocol
    total: int
    bound: int
    quarantined: int

    def __post_init__(self) -> None:
        if min(self.total, self.bound, self.quarantined) < 0:
            raise malformed("port_usage", "counts must not be negative")
        if self.bound + self.quarantined > self.total:
            raise malformed("port_usage", "more ports in use than the range holds")

    @property
    def free(self) -> int:
        return self.total - self.bound - self.quarantined


@dataclass(frozen=True)
class ExternalAddress:
    address: IPAddress
    pool: str
    ip_version: IpVersion
    port_usage: tuple[PortUsage, ...] = ()


@dataclass(frozen=True)
class Event:
    sequence: int
    kind: EventKind
    time: float
    epoch: int
    group_id: str | None = None
    binding_id: str | None = None
    rule_id: str | None = None
    pool: str | None = None
    old_address: IPAddress | None = None
    new_address: IPAddress | None = None
    message: str = ""
