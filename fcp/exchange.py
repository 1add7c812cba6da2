"""The client end of FCP's Exchange stream: many operations, one long-lived gRPC stream.

A unary gRPC call opens an HTTP/2 stream and sends headers, the message and trailers each
way; on our 2-core machines that is a ~0.38 ms round trip and most of both ends' CPU for
an operation. On a stream that is already open, an operation is one message each way
(~0.16 ms). The ALG's operations per call (reserve at the offer, enable + group lifetime at
the answer, release at the end) all take this path.

`ExchangeStream.call(request, timeout)` numbers the request, sends it on the stream (opened
on first use, and again after it broke) and waits for the response with that number.
Every failure is an `ExchangeFailed` carrying the gRPC status code the unary call would
have ended with, so the client's retry rule is the same for both paths:

* the agent refused the operation: the status in its response; the stream goes on;
* no answer within the timeout: DEADLINE_EXCEEDED (a late answer is dropped);
* the stream broke or ended (agent gone or stopping): the stream's status, UNAVAILABLE if
  it ended cleanly. Every operation waiting on it fails with it; the next call opens a new
  stream. `broken` tells these from a refusal: an agent that does not know Exchange ends
  the stream with UNIMPLEMENTED, and `fcp.client` then falls back to unary calls.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import grpc

from fcp.errors import FcpError, Reason
from fcp.status import decode_error, error_from_status
from fcp.v1 import fcp_pb2 as pb

ExchangeCall = grpc.aio.StreamStreamCall[pb.ExchangeRequest, pb.ExchangeResponse]


class ExchangeFailed(Exception):
    """An operation on the stream failed; `code` is the status its unary call would have."""

    def __init__(self, code: grpc.StatusCode, error: FcpError, *, broken: bool) -> None:
        super().__init__(str(error))
        self.code = code
        self.error = error
        self.broken = broken  # the stream failed, not the operation


def _stream_failure(exc: grpc.aio.AioRpcError) -> ExchangeFailed:
    # At runtime the trailer is a grpc.aio.Metadata of (key, value) pairs.
    trailer: Any = exc.trailing_metadata() or ()
    error = decode_error(exc.code(), exc.details(), [(k, v) for k, v in trailer])
    return ExchangeFailed(exc.code(), error, broken=True)


def _ended() -> ExchangeFailed:
    error = FcpError(Reason.NETWORK_FAILURE, "UNAVAILABLE: the agent ended the exchange stream")
    return ExchangeFailed(grpc.StatusCode.UNAVAILABLE, error, broken=True)


def _closed() -> ExchangeFailed:
    error = FcpError(Reason.NETWORK_FAILURE, "CANCELLED: the FCP client was closed")
    return ExchangeFailed(grpc.StatusCode.CANCELLED, error, broken=True)


class ExchangeStream:
    """See the module docstring. `open_call` starts a new Exchange call (the stub's method)."""

    def __init__(self, open_call: Callable[[], ExchangeCall]) -> None:
        self._open = open_call
        self._call: ExchangeCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[pb.ExchangeResponse]] = {}
        self._ids = itertools.count(1)
        self._writing = asyncio.Lock()  # grpc takes one message at a time per call
        self._shut = False

    @property
    def open(self) -> bool:
        return self._call is not None

    async def call(self, request: pb.ExchangeRequest, timeout: float) -> pb.ExchangeResponse:
        """Send `request` (its id is set here) and return its answer; see the module doc."""
        if self._shut:
            raise _closed()
        call = self._call or self._start()
        request.id = number = next(self._ids)
        answer: asyncio.Future[pb.ExchangeResponse] = asyncio.get_running_loop().create_future()
        self._pending[number] = answer
        try:
            async with asyncio.timeout(timeout):
                try:
                    async with self._writing:
                        await call.write(request)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    pass  # the stream is over: the reader fails `answer` with its status
                response = await answer
        except TimeoutError:
            error = FcpError(
                Reason.NETWORK_FAILURE, f"DEADLINE_EXCEEDED: no answer within {timeout:g} s"
            )
            raise ExchangeFailed(grpc.StatusCode.DEADLINE_EXCEEDED, error, broken=False) from None
        finally:
            del self._pending[number]
            if answer.done() and not answer.cancelled():
                # The stream's failure may have been set on `answer` just before this task
                # was cancelled (the ALG shutting down): mark it seen, or asyncio logs
                # "Future exception was never retrieved" for every such operation.
                answer.exception()
        if response.WhichOneof("result") == "error":
            code, error = error_from_status(response.error)
            raise ExchangeFailed(code or grpc.StatusCode.UNKNOWN, error, broken=False)
        return response

    def _start(self) -> ExchangeCall:
        call = self._call = self._open()
        self._reader = asyncio.get_running_loop().create_task(self._read(call))
        return call

    async def _read(self, call: ExchangeCall) -> None:
        failure = _ended()
        try:
            async for response in call:
                answer = self._pending.get(response.id)
                if answer is not None and not answer.done():
                    answer.set_result(response)
        except grpc.aio.AioRpcError as exc:
            failure = _stream_failure(exc)
        except asyncio.CancelledError:
            failure = _closed()
            raise
        finally:
            if self._call is call:
                self._call = None
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(failure)

    async def close(self) -> None:
        """Cancel the stream; operations still waiting fail with CANCELLED."""
        self._shut = True
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
