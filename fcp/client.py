"""`FcpClient`: the typed asyncio client the ALG uses to drive the filter agent.

* Transport: mutual TLS (`ClientTls`), or plaintext only to a unix socket or loopback.
* Every call has a deadline (`deadline` seconds unless given per call).
* Retries: a call that failed with UNAVAILABLE or DEADLINE_EXCEEDED — the agent may or may
  not have acted — is retried with exponential backoff. That is safe because every
  creating/changing request carries an idempotency key: the caller's, or one generated here
  BEFORE the first attempt, so all attempts share it and the agent answers a retry with the
  first result (RFC 6887 §11.2 makes MAP retries safe the same way).
* Epoch (PCP §8.5): `open_session` records the agent's epoch, every later call sends it
  in the `fcp-epoch` metadata. If the agent restarted, the call fails with STALE_EPOCH and
  this client raises `EpochChanged` (and calls `on_epoch_change(old, new)` once per new
  epoch); a new epoch seen in `open_session` or in a WATCH_STARTED event is reported the
  same way. Calls keep failing until the owner calls `open_session` again: state the
  client believes in may be gone, so it must not carry on silently.
* Exchange: reserve, enable, lifetime changes and batches travel as messages on one
  long-lived Exchange stream (`fcp.exchange`), not as unary calls: a unary round trip
  costs about twice as much, in time and in CPU at both ends. Deadlines, retries with the
  same key and the epoch check are the same on both paths. An agent that does not know
  Exchange is detected at the first call and spoken to in unary calls from then on;
  `exchange=False` chooses unary calls from the start. Queries are always unary.
* Errors: only `FcpError` (rebuilt from the server's FcpErrorDetail, `fcp.status`), never
  a raw `grpc.RpcError`.
* Keepalive: HTTP/2 PINGs every `keepalive` seconds, also with no call running, and the
  connection is given up when one is not answered within `keepalive_timeout`. A gateway
  that hangs or vanishes without a TCP reset would otherwise leave the event stream
  (WatchEvents) open forever and the ALG would keep choosing that agent. The server
  permits pings every `fcp.server.MIN_PING_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from fcp import convert
from fcp.errors import EpochChanged, FcpError, Reason
from fcp.exchange import ExchangeFailed, ExchangeStream
from fcp.server import MIN_PING_INTERVAL, is_local_address
from fcp.status import EPOCH_METADATA_KEY, decode_error
from fcp.types import (
    BatchOperation,
    BatchRequest,
    BatchResult,
    Binding,
    BindingRequest,
    Event,
    EventKind,
    ExternalAddress,
    Group,
    GroupLifetimeChange,
    GroupLifetimeGrant,
    LifetimeChange,
    LifetimeGrant,
    Rule,
    RuleRequest,
    Session,
    SessionRequest,
)
from fcp.v1 import fcp_pb2 as pb
from fcp.v1 import fcp_pb2_grpc as pb_grpc

log = logging.getLogger("sipwall.fcp.client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Keyed = TypeVar("Keyed", BindingRequest, RuleRequest, LifetimeChange, GroupLifetimeChange)

EpochCallback = Callable[[int | None, int | None], None]
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class ClientTls:
    """PEM material: the CA that signs the agent, our certificate chain and key."""

    ca: bytes
    cert_chain: bytes
    private_key: bytes
    server_name: str | None = None  # when the target is not a name/IP in the agent's SANs

    @classmethod
    def from_files(cls, ca: Path, cert: Path, key: Path) -> ClientTls:
        return cls(ca.read_bytes(), cert.read_bytes(), key.read_bytes())


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # total tries, including the first
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delay(self, attempt: int, hint: float | None) -> float:
        """Backoff before retry number `attempt` (1-based), jittered; honours retry-after."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        jittered = base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret
        return max(jittered, min(hint, self.max_backoff)) if hint is not None else jittered


def _new_key() -> str:
    return uuid.uuid4().hex


class FcpClient:
    """A connection to one filter agent; see the module docstring."""

    def __init__(
        self,
        target: str,
        tls: ClientTls | None = None,
        *,
        deadline: float = 5.0,
        retry: RetryPolicy | None = None,
        on_epoch_change: EpochCallback | None = None,
        incarnation_id: str | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        keepalive: float = 5.0,
        keepalive_timeout: float = 3.0,
        exchange: bool = True,
    ) -> None:
        if keepalive < MIN_PING_INTERVAL:
            raise ValueError(f"keepalive below the agent's {MIN_PING_INTERVAL:g} s ping limit")
        options: list[tuple[str, int | str]] = [
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
            # grpc core >= 1.5x times a PING out by this one (default 1 minute), not only
            # by the keepalive timeout
            ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # without data frames (an idle event stream) pings would otherwise be spaced
            # out to this grpc core default of 5 minutes
            ("grpc.http2.min_time_between_pings_ms", int(keepalive * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive * 1000)),
            *channel_options,
        ]
        if tls is None:
            if not is_local_address(target):
                raise ValueError(f"plaintext FCP only to a unix socket or loopback: {target}")
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            if tls.server_name is not None:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.private_key, tls.cert_chain)
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.FirewallControlStub(self._channel)
        self._exchange = ExchangeStream(lambda: self._stub.Exchange(None)) if exchange else None
        self._deadline = deadline
        self._retry = retry or RetryPolicy()
        self._on_epoch_change = on_epoch_change
        self.incarnation_id = incarnation_id or _new_key()
        self.session: Session | None = None
        self.epoch: int | None = None
        self.epoch_changed = False  # set when the agent restarted since open_session
        self._reported_epoch: int | None = None

    @property
    def uses_exchange(self) -> bool:
        """True while operations go on the Exchange stream (see the module docstring)."""
        return self._exchange is not None

    async def close(self) -> None:
        if self._exchange is not None:
            await self._exchange.close()
        await self._channel.close(None)

    async def __aenter__(self) -> FcpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- epoch -----------------------------------------------------------------------

    def _observe_epoch(self, new: int | None) -> bool:
        """Note the agent's epoch; report a change once. True if it changed."""
        if new is None or self.epoch is None or new == self.epoch:
            return False
        self.epoch_changed = True
        if new != self._reported_epoch:
            self._reported_epoch = new
            log.warning("FCP agent epoch changed %s -> %s: the agent restarted", self.epoch, new)
            if self._on_epoch_change is not None:
                self._on_epoch_change(self.epoch, new)
        return True

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.epoch is None else ((EPOCH_METADATA_KEY, str(self.epoch)),)

    # ---- call machinery --------------------------------------------------------------

    def _error(self, exc: grpc.aio.AioRpcError) -> FcpError:
        # At runtime the trailer is a grpc.aio.Metadata that iterates as (key, value) pairs;
        # the stubs describe the sync API's _Metadatum objects.
        trailer: Any = exc.trailing_metadata() or ()
        return self._checked(decode_error(exc.code(), exc.details(), [(k, v) for k, v in trailer]))

    def _checked(self, error: FcpError) -> FcpError:
        if error.reason is Reason.STALE_EPOCH:
            old = self.epoch
            self._observe_epoch(error.epoch)
            return EpochChanged(old, error.epoch, error.message)
        return error

    async def _retrying(
        self, attempt: Callable[[float], Awaitable[Resp]], deadline: float | None
    ) -> Resp:
        """`attempt(timeout)` until it succeeds, fails for good, or runs out of tries."""
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt(deadline or self._deadline)
            except grpc.aio.AioRpcError as exc:
                code, error = exc.code(), self._error(exc)
            except ExchangeFailed as failed:
                if failed.broken and failed.code is grpc.StatusCode.UNIMPLEMENTED:
                    await self._without_exchange()
                    tries -= 1  # the agent never saw it: not a try
                    continue
                code, error = failed.code, self._checked(failed.error)
            if code not in RETRYABLE_CODES or tries >= self._retry.attempts:
                raise error from None
            delay = self._retry.delay(tries, error.retry_after)
            log.info("FCP call failed (%s), retry %d in %.2fs", error, tries, delay)
            await asyncio.sleep(delay)

    async def _without_exchange(self) -> None:
        if self._exchange is not None:
            log.warning("the FCP agent does not offer Exchange: using unary calls")
            exchange, self._exchange = self._exchange, None
            await exchange.close()

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        deadline: float | None = None,
        send_epoch: bool = True,
    ) -> Resp:
        async def attempt(timeout: float) -> Resp:
            metadata = self._metadata() if send_epoch else ()
            response: Resp = await method(request, timeout=timeout, metadata=metadata)
            return response

        return await self._retrying(attempt, deadline)

    async def _operation(
        self,
        field: str,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        deadline: float | None,
    ) -> Resp:
        """A creating/changing operation: on the Exchange stream as its `field`, or as the
        unary `method` when the agent does not offer Exchange."""

        async def attempt(timeout: float) -> Resp:
            exchange = self._exchange
            if exchange is None:
                response: Resp = await method(request, timeout=timeout, metadata=self._metadata())
                return response
            message = pb.ExchangeRequest()
            if self.epoch is not None:
                message.epoch = self.epoch
            getattr(message, field).CopyFrom(request)
            answer = await exchange.call(message, timeout)
            return cast("Resp", getattr(answer, field))

        return await self._retrying(attempt, deadline)

    @staticmethod
    def _keyed(request: Keyed) -> Keyed:
        if request.idempotency_key is not None:
            return request
        return dataclasses.replace(request, idempotency_key=_new_key())

    # ---- session and events ----------------------------------------------------------

    async def open_session(
        self, *, release_previous_state: bool = False, deadline: float | None = None
    ) -> Session:
        """Learn capabilities and the epoch; clears a previously detected epoch change."""
        request = SessionRequest(self.incarnation_id, release_previous_state)
        response = await self._unary(
            self._stub.OpenSession,
            convert.session_request_to_proto(request),
            deadline=deadline,
            send_epoch=False,
        )
        session = convert.session_from_proto(response)
        self._observe_epoch(session.epoch)
        self.session, self.epoch, self.epoch_changed = session, session.epoch, False
        return session

    async def watch_events(self) -> AsyncIterator[Event]:
        """Events until the stream ends or fails (FcpError). No deadline, no retry."""
        call = self._stub.WatchEvents(pb.WatchEventsRequest(), metadata=self._metadata())
        try:
            async for message in call:
                event = convert.event_from_proto(message)
                if event.kind is EventKind.WATCH_STARTED:
                    self._observe_epoch(event.epoch)
                yield event
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    # ---- bindings, rules, lifetimes --------------------------------------------------

    async def reserve_binding(
        self, request: BindingRequest, *, deadline: float | None = None
    ) -> Binding:
        message = convert.binding_request_to_proto(self._keyed(request))
        response = await self._operation(
            "reserve_binding", self._stub.ReserveBinding, message, deadline
        )
        return convert.binding_from_proto(response.binding)

    async def enable_rule(self, request: RuleRequest, *, deadline: float | None = None) -> Rule:
        message = convert.rule_request_to_proto(self._keyed(request))
        response = await self._operation("enable_rule", self._stub.EnableRule, message, deadline)
        return convert.rule_from_proto(response.rule)

    async def change_lifetime(
        self, request: LifetimeChange, *, deadline: float | None = None
    ) -> LifetimeGrant:
        message = convert.lifetime_change_to_proto(self._keyed(request))
        response = await self._operation(
            "change_lifetime", self._stub.ChangeLifetime, message, deadline
        )
        return convert.lifetime_grant_from_proto(response)

    async def change_group_lifetime(
        self, request: GroupLifetimeChange, *, deadline: float | None = None
    ) -> GroupLifetimeGrant:
        message = convert.group_change_to_proto(self._keyed(request))
        response = await self._operation(
            "change_group_lifetime", self._stub.ChangeGroupLifetime, message, deadline
        )
        return convert.group_grant_from_proto(response)

    async def release_group(self, group_id: str) -> GroupLifetimeGrant:
        """The call is over: release everything in its group (ChangeGroupLifetime 0)."""
        return await self.change_group_lifetime(GroupLifetimeChange(group_id, 0))

    async def batch(
        self,
        operations: Sequence[BatchOperation],
        *,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> tuple[BatchResult, ...]:
        """Apply all operations atomically; the error's operation_index names the failure."""
        request = BatchRequest(tuple(operations), idempotency_key or _new_key())
        message = convert.batch_to_proto(request)
        response = await self._operation("batch", self._stub.Batch, message, deadline)
        return tuple(convert.batch_result_from_proto(r) for r in response.results)

    # ---- queries ---------------------------------------------------------------------

    async def list_rules(
        self, group_id: str | None = None, binding_id: str | None = None
    ) -> list[Rule]:
        message = pb.ListRulesRequest(group_id=group_id or "", binding_id=binding_id or "")
        response = await self._unary(self._stub.ListRules, message)
        return [convert.rule_from_proto(r) for r in response.rules]

    async def list_bindings(self, group_id: str | None = None) -> list[Binding]:
        message = pb.ListBindingsRequest(group_id=group_id or "")
        response = await self._unary(self._stub.ListBindings, message)
        return [convert.binding_from_proto(b) for b in response.bindings]

    async def list_groups(self) -> list[Group]:
        response = await self._unary(self._stub.ListGroups, pb.ListGroupsRequest())
        return [convert.group_from_proto(g) for g in response.groups]

    async def get_rule(self, rule_id: str) -> Rule:
        response = await self._unary(self._stub.GetRule, pb.GetRuleRequest(rule_id=rule_id))
        return convert.rule_from_proto(response)

    async def get_binding(self, binding_id: str) -> Binding:
        message = pb.GetBindingRequest(binding_id=binding_id)
        return convert.binding_from_proto(await self._unary(self._stub.GetBinding, message))

    async def get_group(self, group_id: str) -> Group:
        message = pb.GetGroupRequest(group_id=group_id)
        return convert.group_from_proto(await self._unary(self._stub.GetGroup, message))

    async def get_external_addresses(self, pool: str | None = None) -> list[ExternalAddress]:
        message = pb.GetExternalAddressRequest(pool=pool or "")
        response = await self._unary(self._stub.GetExternalAddress, message)
        return [convert.external_address_from_proto(a) for a in response.addresses]
