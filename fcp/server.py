"""The FCP gRPC server: a grpc.aio shell around a `FirewallBackend`.

Per call, in this order: identify the caller from its mTLS client certificate and check it
against the allow-list (NOT_AUTHORIZED otherwise); check the `fcp-epoch` request metadata
against the backend's epoch (STALE_EPOCH); convert and validate the request (MALFORMED with
the field); call the backend; convert the result. An `FcpError` becomes a gRPC status plus
the FcpErrorDetail trailer (`fcp.status`, the only place status codes are chosen); any other
exception is a bug: it is logged with its traceback here and the client gets INTERNAL with
the bare message "internal error". Every unary RPC takes this one path (`FcpServicer._unary`);
what differs per RPC is a row of `UNARY_RPCS`. WatchEvents, a server stream, has its own.

Insecure (plaintext) serving exists for a unix socket or loopback only, with one fixed
identity, and says so loudly in the log: it is for a single-host deployment where the
socket's file permissions are the access control.

Identities in `ServerConfig.admin_identities` (operators, `sipwall ctl`) are allowed and
reach the backend as `fcp.backend.ADMIN_OWNER`; what an admin may do is the backend's
decision (see `fcp.backend`).

The standard health service (`grpc.health.v1.Health`) and server reflection are
registered; they are not identity-checked beyond the TLS handshake.
"""

# ruff: noqa: N802 - servicer methods carry the gRPC method names

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import grpc
from cryptography import x509
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fcp import convert
from fcp.backend import ADMIN_OWNER, FirewallBackend
from fcp.certs import identity_of
from fcp.convert_scalars import optional_str
from fcp.errors import FcpError, Reason, malformed
from fcp.status import (
    EPOCH_METADATA_KEY,
    STATUS_DETAILS_KEY,
    encode_detail,
    rpc_status,
    status_code,
)
from fcp.v1 import fcp_pb2 as pb
from fcp.v1 import fcp_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from fcp.v1.fcp_pb2_grpc import _ServicerContext as Context

log = logging.getLogger("sipwall.fcp.server")

Req = TypeVar("Req", bound=Message)
Arg = TypeVar("Arg")
Res = TypeVar("Res")
Resp = TypeVar("Resp", bound=Message)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FirewallControl"].full_name
# The shortest keepalive interval a client may use (fcp.client): pings more often than
# this on an idle connection are "misbehaving" and, after a few, the server closes it.
MIN_PING_INTERVAL = 1.0
MIN_PING_INTERVAL_MS = int(MIN_PING_INTERVAL * 1000)


@dataclass(frozen=True)
class ServerTls:
    """PEM material for mutual TLS: our chain and key, and the CA that signs clients."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes

    @classmethod
    def from_files(cls, cert: Path, key: Path, ca: Path) -> ServerTls:
        return cls(cert.read_bytes(), key.read_bytes(), ca.read_bytes())


@dataclass(frozen=True)
class ServerConfig:
    """Where and how to serve. `address`: "host:port" (port 0: pick one) or "unix:/path"."""

    address: str
    allowed_identities: frozenset[str]
    tls: ServerTls | None = None
    insecure_identity: str | None = None  # the owner of every call when tls is None
    grace_seconds: float = 1.0
    # Operators (`sipwall ctl`): allowed too, and the backend sees them as ADMIN_OWNER.
    admin_identities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.tls is None:
            if not is_local_address(self.address):
                raise ValueError(f"insecure FCP only on a unix socket or loopback: {self.address}")
            if self.insecure_identity is None:
                raise ValueError("insecure FCP needs insecure_identity")
            if self.insecure_identity not in self.allowed_identities:
                raise ValueError("insecure_identity must be in allowed_identities")


def is_local_address(address: str) -> bool:
    """True for unix sockets and loopback host:port addresses."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _aio(context: Context) -> grpc.aio.ServicerContext[Any, Any]:
    # The generated stub's context type merges the sync and aio contexts, whose signatures
    # disagree (abort, auth_context); at runtime it is always the aio one.
    return cast("grpc.aio.ServicerContext[Any, Any]", context)


def _caller_identity(context: Context) -> str | None:
    """The identity in the peer's verified client certificate (URI SAN, else CN)."""
    pems = _aio(context).auth_context().get("x509_pem_cert")
    first = next(iter(pems), None) if pems is not None else None
    if first is None:
        return None
    return _identity_of_pem(first)


@functools.lru_cache(maxsize=1024)
def _identity_of_pem(pem: bytes) -> str | None:
    """Parsing the certificate was ~0.1 ms of every call; the answer for given bytes never
    changes (the TLS layer verified them before any call reaches us), so it is cached."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return None


@dataclass(frozen=True)
class UnaryRpc(Generic[Req, Arg, Res, Resp]):
    """What one unary RPC does once the caller is known: validate the request into the
    backend's argument (`parse`, raising MALFORMED naming the field), ask the backend
    (`call`), and turn its answer into the response message (`render`). `request` is the
    message type and `response` the reply's, both checked against the service
    descriptor by the tests."""

    request: type[Req]
    response: type[Resp]
    parse: Callable[[Req], Arg]
    call: Callable[[FirewallBackend, str, Arg], Awaitable[Res]]
    render: Callable[[Res], Resp]

    async def run(self, backend: FirewallBackend, owner: str, request: Message) -> Resp:
        # gRPC deserialised `request` with the type registered under this RPC's name.
        arg = self.parse(cast("Req", request))
        return self.render(await self.call(backend, owner, arg))


def _rpc(
    request: type[Req],
    response: type[Resp],
    parse: Callable[[Req], Arg],
    call: Callable[[FirewallBackend, str, Arg], Awaitable[Res]],
    render: Callable[[Res], Resp],
) -> UnaryRpc[Any, Any, Any, Any]:
    # Built here rather than in the table's literal so that mypy checks each entry's four
    # parts against each other before the table forgets their types.
    return UnaryRpc(request, response, parse, call, render)


# Every unary RPC, in the order of the service in fcp.proto (proto3: an empty id filter is
# "not given", hence `optional_str`). Identity, the allow-list,
# admin identities and the epoch check are the same for all of them (`FcpServicer._unary`).
UNARY_RPCS: Final[Mapping[str, UnaryRpc[Any, Any, Any, Any]]] = {
    "OpenSession": _rpc(
        pb.OpenSessionRequest,
        pb.OpenSessionResponse,
        convert.session_request_from_proto,
        lambda backend, owner, request: backend.open_session(owner, request),
        convert.session_to_proto,
    ),
    "ReserveBinding": _rpc(
        pb.ReserveBindingRequest,
        pb.ReserveBindingResponse,
        convert.binding_request_from_proto,
        lambda backend, owner, request: backend.reserve_binding(owner, request),
        lambda binding: pb.ReserveBindingResponse(binding=convert.binding_to_proto(binding)),
    ),
    "EnableRule": _rpc(
        pb.EnableRuleRequest,
        pb.EnableRuleResponse,
        convert.rule_request_from_proto,
        lambda backend, owner, request: backend.enable_rule(owner, request),
        lambda rule: pb.EnableRuleResponse(rule=convert.rule_to_proto(rule)),
    ),
    "ChangeLifetime": _rpc(
        pb.ChangeLifetimeRequest,
        pb.ChangeLifetimeResponse,
        convert.lifetime_change_from_proto,
        lambda backend, owner, change: backend.change_lifetime(owner, change),
        convert.lifetime_grant_to_proto,
    ),
    "ChangeGroupLifetime": _rpc(
        pb.ChangeGroupLifetimeRequest,
        pb.ChangeGroupLifetimeResponse,
        convert.group_change_from_proto,
        lambda backend, owner, change: backend.change_group_lifetime(owner, change),
        convert.group_grant_to_proto,
    ),
    "ListRules": _rpc(
        pb.ListRulesRequest,
        pb.ListRulesResponse,
        lambda message: (optional_str(message.group_id), optional_str(message.binding_id)),
        lambda backend, owner, ids: backend.list_rules(owner, *ids),
        lambda rules: pb.ListRulesResponse(rules=[convert.rule_to_proto(r) for r in rules]),
    ),
    "ListBindings": _rpc(
        pb.ListBindingsRequest,
        pb.ListBindingsResponse,
        lambda message: optional_str(message.group_id),
        lambda backend, owner, group_id: backend.list_bindings(owner, group_id),
        lambda bindings: pb.ListBindingsResponse(
            bindings=[convert.binding_to_proto(b) for b in bindings]
        ),
    ),
    "ListGroups": _rpc(
        pb.ListGroupsRequest,
        pb.ListGroupsResponse,
        lambda message: None,
        lambda backend, owner, _: backend.list_groups(owner),
        lambda groups: pb.ListGroupsResponse(groups=[convert.group_to_proto(g) for g in groups]),
    ),
    "GetRule": _rpc(
        pb.GetRuleRequest,
        pb.Rule,
        lambda message: message.rule_id,
        lambda backend, owner, rule_id: backend.get_rule(owner, rule_id),
        convert.rule_to_proto,
    ),
    "GetBinding": _rpc(
        pb.GetBindingRequest,
        pb.Binding,
        lambda message: message.binding_id,
        lambda backend, owner, binding_id: backend.get_binding(owner, binding_id),
        convert.binding_to_proto,
    ),
    "GetGroup": _rpc(
        pb.GetGroupRequest,
        pb.Group,
        lambda message: message.group_id,
        lambda backend, owner, group_id: backend.get_group(owner, group_id),
        convert.group_to_proto,
    ),
    "Batch": _rpc(
        pb.BatchRequest,
        pb.BatchResponse,
        convert.batch_from_proto,
        lambda backend, owner, batch: backend.batch(owner, batch),
        lambda results: pb.BatchResponse(
            results=[convert.batch_result_to_proto(r) for r in results]
        ),
    ),
    "GetExternalAddress": _rpc(
        pb.GetExternalAddressRequest,
        pb.GetExternalAddressResponse,
        lambda message: optional_str(message.pool),
        lambda backend, owner, pool: backend.get_external_addresses(owner, pool),
        lambda addresses: pb.GetExternalAddressResponse(
            addresses=[convert.external_address_to_proto(a) for a in addresses]
        ),
    ),
}


# The operations an Exchange request may carry: its oneof field -> the unary RPC whose
# table row runs it. The response's oneof field has the same name.
EXCHANGE_RPCS: Final[Mapping[str, str]] = {
    "reserve_binding": "ReserveBinding",
    "enable_rule": "EnableRule",
    "change_lifetime": "ChangeLifetime",
    "change_group_lifetime": "ChangeGroupLifetime",
    "batch": "Batch",
}
# Operations of one Exchange stream running at once; past this the stream is not read,
# and HTTP/2 flow control holds the client back.
EXCHANGE_IN_FLIGHT = 256
INTERNAL_STATUS = pb.RpcStatus(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")


def _exchange_operation(request: pb.ExchangeRequest) -> tuple[str, UnaryRpc[Any, Any, Any, Any]]:
    """The request's oneof field and the table row that runs it."""
    field = request.WhichOneof("operation")
    if field is None:
        raise malformed("operation", "the request carries no operation")
    return field, UNARY_RPCS[EXCHANGE_RPCS[field]]


class _ExchangeStream:
    """One Exchange call: reads requests, runs each as its own task (as separate unary
    calls would run), and queues every answer for the handler to write. `stop` (agent
    shutdown) stops reading; the answers of operations already running are still sent,
    then the stream ends and the client opens a new one."""

    def __init__(
        self,
        answer: Callable[[pb.ExchangeRequest], Awaitable[pb.ExchangeResponse]],
        requests: AsyncIterator[pb.ExchangeRequest],
    ) -> None:
        self._answer = answer
        self.answers: asyncio.Queue[pb.ExchangeResponse | None] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(EXCHANGE_IN_FLIGHT)
        self._reader = asyncio.create_task(self._read(requests))

    async def _read(self, requests: AsyncIterator[pb.ExchangeRequest]) -> None:
        try:
            async for request in requests:
                await self._room.acquire()
                task = asyncio.create_task(self._run(request))
                self._running.add(task)
                task.add_done_callback(self._done)
        except asyncio.CancelledError:
            pass  # stop(): what is running still answers
        except Exception:  # the call broke under us: the handler ends it
            log.debug("FCP Exchange stream stopped reading", exc_info=True)
        finally:
            if self._running:
                await asyncio.wait(set(self._running))
            self.answers.put_nowait(None)

    async def _run(self, request: pb.ExchangeRequest) -> None:
        self.answers.put_nowait(await self._answer(request))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._room.release()

    def stop(self) -> None:
        self._reader.cancel()

    def abandon(self) -> None:
        """The call is over (client gone or cancelled): nobody reads the answers."""
        self._reader.cancel()
        for task in tuple(self._running):
            task.cancel()


def _unary_method(name: str) -> Any:
    """The servicer method gRPC calls for RPC `name`: the shared path, told which RPC.
    `Any`, because mypy will not let a callable attribute stand in for the generated
    abstract method; which message types go with `name` is the table's business."""

    rpc = UNARY_RPCS[name]  # a name not in the table fails at import, not at the first call

    async def method(self: FcpServicer, request: Message, context: Context) -> Message:
        return await self._unary(name, rpc, request, context)

    method.__name__ = method.__qualname__ = name
    return method


class FcpServicer(pb_grpc.FirewallControlServicer):
    """Authenticates, converts and delegates every RPC to the backend."""

    def __init__(
        self,
        backend: FirewallBackend,
        allowed_identities: frozenset[str],
        insecure_identity: str | None = None,
        admin_identities: frozenset[str] = frozenset(),
    ) -> None:
        self._backend = backend
        self._allowed = allowed_identities | admin_identities
        self._admins = admin_identities
        self._insecure_identity = insecure_identity
        self._exchanges: set[_ExchangeStream] = set()

    # ---- plumbing --------------------------------------------------------------------

    def _owner(self, context: Context) -> str:
        identity = self._insecure_identity or _caller_identity(context)
        if identity is None or identity not in self._allowed:
            log.warning("refused FCP call from %s (identity %r)", context.peer(), identity)
            raise FcpError(Reason.NOT_AUTHORIZED, f"identity {identity!r} is not allowed")
        return ADMIN_OWNER if identity in self._admins else identity

    def _check_epoch(self, context: Context) -> None:
        for key, value in context.invocation_metadata() or ():
            if key != EPOCH_METADATA_KEY:
                continue
            text = value.decode() if isinstance(value, bytes) else value
            if not text.isdigit():
                raise malformed(EPOCH_METADATA_KEY, f"{text!r} is not a decimal epoch")
            self._check_epoch_number(int(text))

    def _check_epoch_number(self, epoch: int) -> None:
        if epoch != self._backend.epoch:
            raise FcpError(
                Reason.STALE_EPOCH,
                f"epoch {epoch} is stale: the agent restarted (now {self._backend.epoch})",
                epoch=self._backend.epoch,
            )

    async def _abort(self, context: Context, error: FcpError) -> None:
        trailer = ((STATUS_DETAILS_KEY, encode_detail(error, self._backend.epoch)),)
        await _aio(context).abort(status_code(error.reason), str(error), trailer)

    async def _internal(self, context: Context, method: str) -> None:
        log.exception("FCP %s failed unexpectedly", method)
        await _aio(context).abort(grpc.StatusCode.INTERNAL, "internal error")

    async def _unary(
        self, name: str, rpc: UnaryRpc[Any, Any, Any, Any], request: Message, context: Context
    ) -> Message:
        """The one path of every unary RPC; `rpc` (its `UNARY_RPCS` entry) says what differs."""
        try:
            owner = self._owner(context)
            self._check_epoch(context)
            response: Message = await rpc.run(self._backend, owner, request)
            return response
        except FcpError as exc:
            await self._abort(context, exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # noqa: BLE001 - any backend bug becomes INTERNAL, logged
            await self._internal(context, name)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    # ---- RPCs ------------------------------------------------------------------------

    # The generated base class names every RPC as an abstract method, and the generated
    # `add_FirewallControlServicer_to_server` looks them up by name: one line each here.
    OpenSession = _unary_method("OpenSession")
    ReserveBinding = _unary_method("ReserveBinding")
    EnableRule = _unary_method("EnableRule")
    ChangeLifetime = _unary_method("ChangeLifetime")
    ChangeGroupLifetime = _unary_method("ChangeGroupLifetime")
    ListRules = _unary_method("ListRules")
    ListBindings = _unary_method("ListBindings")
    ListGroups = _unary_method("ListGroups")
    GetRule = _unary_method("GetRule")
    GetBinding = _unary_method("GetBinding")
    GetGroup = _unary_method("GetGroup")
    Batch = _unary_method("Batch")
    GetExternalAddress = _unary_method("GetExternalAddress")

    # ---- Exchange: the unary operations as messages on one stream ----------------------

    async def Exchange(
        self, requests: AsyncIterator[pb.ExchangeRequest], context: Context
    ) -> AsyncIterator[pb.ExchangeResponse]:
        # The identity of a TLS connection cannot change: it is checked once, and a
        # refused caller's stream ends with the status its unary calls would get.
        try:
            owner = self._owner(context)
        except FcpError as exc:
            await self._abort(context, exc)
            return
        stream = _ExchangeStream(functools.partial(self._exchange_answer, owner), requests)
        self._exchanges.add(stream)
        try:
            while (answer := await stream.answers.get()) is not None:
                yield answer
        finally:
            self._exchanges.discard(stream)
            stream.abandon()

    async def _exchange_answer(
        self, owner: str, request: pb.ExchangeRequest
    ) -> pb.ExchangeResponse:
        """What the unary call would have answered, as the response to `request.id`: the
        same table row runs it, and an error is the same status with its detail."""
        field = "?"
        try:
            field, rpc = _exchange_operation(request)
            if request.HasField("epoch"):
                self._check_epoch_number(request.epoch)
            result = await rpc.run(self._backend, owner, getattr(request, field))
        except FcpError as exc:
            return pb.ExchangeResponse(id=request.id, error=rpc_status(exc, self._backend.epoch))
        except asyncio.CancelledError:
            raise
        except Exception:  # any backend bug becomes INTERNAL, logged
            log.exception("FCP Exchange %s failed unexpectedly", field)
            return pb.ExchangeResponse(id=request.id, error=INTERNAL_STATUS)
        answer = pb.ExchangeResponse(id=request.id)
        getattr(answer, field).CopyFrom(result)
        return answer

    def stop_exchanges(self) -> None:
        """The agent is stopping: every Exchange stream answers what it is running, then
        ends (the client reconnects, to this agent's successor)."""
        for stream in self._exchanges:
            stream.stop()

    # A server stream does not fit the unary shape: errors before the first event abort
    # the call, the backend's iterator must be closed however the stream ends.
    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        try:
            owner = self._owner(context)
            self._check_epoch(context)
            events = self._backend.watch_events(owner)
        except FcpError as exc:
            await self._abort(context, exc)
            return
        try:
            async for event in events:
                yield convert.event_to_proto(event)
        except FcpError as exc:
            await self._abort(context, exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:  # noqa: BLE001 - any backend bug becomes INTERNAL, logged
            await self._internal(context, "WatchEvents")
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


class FcpServer:
    """A running FCP endpoint: FirewallControl + health + reflection on one port."""

    def __init__(self, backend: FirewallBackend, config: ServerConfig) -> None:
        self._backend = backend
        self._config = config
        self._server: grpc.aio.Server | None = None
        self._servicer: FcpServicer | None = None
        # The stubs lack the aio flavour of the health servicer; it has the same surface.
        self._health: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.port = 0

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FCP server already started")
        config = self._config
        # No SO_REUSEPORT: a second agent on the same port must fail, not share the traffic.
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                # clients detect a hung agent by keepalive pings (fcp.client): allow them
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
            ]
        )
        self._servicer = FcpServicer(
            self._backend,
            config.allowed_identities,
            config.insecure_identity,
            config.admin_identities,
        )
        pb_grpc.add_FirewallControlServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), server
        )
        if config.tls is None:
            log.warning(
                "FCP IS SERVING WITHOUT TLS on %s: every caller is %r. Only the socket's "
                "permissions protect the firewall. Use mutual TLS for anything but a lab.",
                config.address,
                config.insecure_identity,
            )
            self.port = server.add_insecure_port(config.address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(config.tls.private_key, config.tls.cert_chain)],
                root_certificates=config.tls.client_ca,
                require_client_auth=True,
            )
            self.port = server.add_secure_port(config.address, credentials)
        await server.start()
        self._server = server
        for service in (SERVICE_NAME, ""):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "FCP serving on %s (port %d), epoch %d", config.address, self.port, self._backend.epoch
        )

    async def stop(self, grace: float | None = None) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        await self._health.enter_graceful_shutdown()
        if self._servicer is not None:
            self._servicer.stop_exchanges()
        await server.stop(self._config.grace_seconds if grace is None else grace)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def __aenter__(self) -> FcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
