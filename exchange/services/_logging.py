"""The call-log interceptor: a request id for every gRPC call, one log line and
one metric sample per finished call.

The request id is the caller's ``x-request-id`` metadata when it is short and
printable, else a new random one. It is set (with the partner id cleared) inside
the handler's own execution, so every record the handler logs carries it (see
exchange/logs.py); the partner id is set by ``Authenticator.authenticate``. No
other metadata value is read, so no credential can reach the log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import grpc

from exchange.logs import PARTNER_ID, REQUEST_ID
from exchange.metrics import Metrics

__all__ = ["CallLog", "request_id_from"]

log = logging.getLogger("exchange.calls")

REQUEST_ID_HEADER = "x-request-id"
# Visible ASCII, no spaces, at most 64 characters: safe on one log line.
_SANE_ID = re.compile(r"[!-~]{1,64}")
# Probes and tooling call these often; their lines are debug only.
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor

# The behaviours gRPC calls: (request or request iterator, context) -> response(s).
Handler = Callable[..., Any]


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's x-request-id if it is sane, else a new random id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            if _SANE_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(8)


class _Call:
    """One call's ids, timing and outcome."""

    __slots__ = ("code", "method", "metrics", "request_id", "started")

    def __init__(self, method: str, request_id: str, metrics: Metrics) -> None:
        self.method = method
        self.request_id = request_id
        self.metrics = metrics
        self.code = grpc.StatusCode.OK
        self.started = 0.0

    def begin(self) -> None:
        REQUEST_ID.set(self.request_id)
        PARTNER_ID.set(None)
        self.started = time.perf_counter()

    def failed(self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED
        elif isinstance(exc, grpc.aio.AbortError):
            self.code = _code_of(context) or grpc.StatusCode.UNKNOWN
        else:
            self.code = grpc.StatusCode.UNKNOWN

    def succeeded(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # A handler may set a code without raising (context.set_code).
        self.code = _code_of(context) or grpc.StatusCode.OK

    def end(self) -> None:
        seconds = time.perf_counter() - self.started
        code = self.code.name
        self.metrics.grpc_calls.labels(self.method, code).inc()
        self.metrics.grpc_duration.labels(self.method).observe(seconds)
        level = logging.DEBUG if self.method.startswith(_QUIET_PREFIXES) else logging.INFO
        log.log(
            level,
            "%s %s %.1f ms",
            self.method,
            code,
            seconds * 1000,
            extra={"method": self.method, "code": code, "duration_ms": round(seconds * 1000, 3)},
        )


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - older grpc: no code() on the aio context
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some versions keep the raw status number
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return None


class CallLog(_Interceptor):
    """Wraps every registered method's handler; unknown methods pass through
    untouched (so the method label only ever holds registered names)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics(process=False)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        return _wrapped(handler, lambda: _Call(method, request_id_from(metadata), self._metrics))


def _wrapped(
    handler: grpc.RpcMethodHandler[Any, Any], new_call: Callable[[], _Call]
) -> grpc.RpcMethodHandler[Any, Any]:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, new_call), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, new_call), **kwargs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, new_call), **kwargs
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, new_call), **kwargs
        )
    return handler


def _unary(behavior: Handler, new_call: Callable[[], _Call]) -> Handler:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = new_call()
        call.begin()
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            call.failed(exc, context)
            raise
        else:
            call.succeeded(context)
            return response
        finally:
            call.end()

    return run


def _streaming(behavior: Handler, new_call: Callable[[], _Call]) -> Handler:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes with context.write (e.g. the health Watch).
        return _unary(behavior, new_call)

    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        call = new_call()
        call.begin()
        try:
            async with aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        except BaseException as exc:
            # GeneratorExit: the stream was closed under us (the call ended).
            if isinstance(exc, GeneratorExit):
                call.code = grpc.StatusCode.CANCELLED
            else:
                call.failed(exc, context)
            raise
        else:
            call.succeeded(context)
        finally:
            call.end()

    return run
