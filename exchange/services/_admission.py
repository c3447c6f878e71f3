"""Admission: a partner's calls in progress, counted before their requests are read.

gRPC receives a call's whole request (up to the transport limit, ~17 MB for a
bundle) before the handler runs, so a limit checked in the handler comes too late:
forty concurrent 15 MB submissions from one partner held 2.3 GB in the server
before any could be refused. This interceptor runs first. It recognises the
partner by its bearer token (a digest look-up, cached), counts the calls it has in
progress per kind, and past the limit answers RESOURCE_EXHAUSTED at once, without
reading the request. Within the limit, a partner's submissions take turns: a few are
read and processed at once, the others wait here, unread (measured with forty 15 MB
submissions at once: 0.33 GB with two at a time, 1.0 GB with three, 1.2 GB with
four). It only counts: whether the token is valid, and what the partner may do, is
still decided by the handler (``exchange.auth``).

A call signed in by a client certificate alone carries no token here (gRPC shows
interceptors the metadata, not the TLS peer): it is admitted, and the handler's own
limits (submissions being processed, streams open) still apply once it is read.

A slot is given back when the call ends, and also when gRPC drops a call without
running its handler (the caller cancelled while sending): the wrapped behaviour's
finalizer does it, so no slot can leak.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import grpc
from exchange_client._pb import exchange_pb2 as pb

from exchange.errors import ExchangeError, ResourceExhausted
from exchange.model import CredentialKind
from exchange.quota import PartnerQuota
from exchange.store import Store

__all__ = ["Admission", "CallKind"]

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

_EXCHANGE = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
# Token digests -> partner ids remembered (a token never changes owner).
_KNOWN_TOKENS = 10_000
# Probes and tooling: not a partner's calls.
_UNCOUNTED = ("/grpc.health.", "/grpc.reflection.")


class CallKind(enum.StrEnum):
    SUBMISSION = "submission"  # Submit, SubmitStream
    STREAM = "stream"  # Subscribe
    CALL = "call"  # everything else: look-ups, audit, admin


_KINDS = {
    f"/{_EXCHANGE}/Submit": CallKind.SUBMISSION,
    f"/{_EXCHANGE}/SubmitStream": CallKind.SUBMISSION,
    f"/{_EXCHANGE}/Subscribe": CallKind.STREAM,
}


def kind_of(method: str) -> CallKind | None:
    if method.startswith(_UNCOUNTED):
        return None
    return _KINDS.get(method, CallKind.CALL)


class Admission(_Interceptor):
    """Per-partner limits on calls in progress, by kind (``quotas``), applied before
    a call's request is received."""

    def __init__(self, store: Store, quotas: Mapping[CallKind, PartnerQuota]) -> None:
        self._store = store
        self._quotas = quotas
        self._known: OrderedDict[bytes, str] = OrderedDict()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        kind = kind_of(handler_call_details.method)
        if handler is None or kind is None:
            return handler
        partner_id = await self._partner_of(handler_call_details.invocation_metadata or ())
        if partner_id is None:
            return handler  # no token: the handler authenticates (and refuses) as usual
        quota = self._quotas[kind]
        try:
            # Past the limit: refused at once. Within it, a call may wait its turn here,
            # its request unread (submissions: a few at once per partner).
            await quota.enter(partner_id)
        except ResourceExhausted as refusal:
            return _refusing(handler, refusal)
        return _holding(handler, lambda: quota.leave(partner_id))

    async def _partner_of(self, metadata: Any) -> str | None:
        """The partner a bearer token belongs to; None without a token or for a token
        the exchange does not know (the handler says why)."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        if not isinstance(header, str):
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        partner_id = self._known.get(digest)
        if partner_id is not None:
            self._known.move_to_end(digest)
            return partner_id
        try:
            found = await self._store.credential(CredentialKind.TOKEN, digest)
        except ExchangeError:
            return None  # the store is down: the handler reports it
        if found is None:
            return None
        self._known[digest] = partner_id = found[1].partner_id
        if len(self._known) > _KNOWN_TOKENS:
            self._known.popitem(last=False)
        return partner_id


def _refusing(handler: Handler, refusal: ResourceExhausted) -> Handler:
    """A handler that answers ``refusal`` without reading the request: declared as
    taking a request stream, gRPC hands it the call before any message arrives."""

    async def refuse(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message)

    serializer = {"response_serializer": handler.response_serializer}
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, **serializer)


def _holding(handler: Handler, release: Callable[[], None]) -> Handler:
    """``handler`` giving its slot back when the call ends, or when gRPC drops the call
    unrun (the finalizer of the wrapped behaviour; it runs once either way)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    behavior: Callable[..., Any]
    # The aio server's behaviours are coroutine or async generator functions.
    found = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )
    assert found is not None, "a method handler has a behaviour"
    inner: Callable[..., Any] = found
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                async with aclosing(inner(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                done()

        behavior = streaming
    else:  # a unary call, or a stream written with context.write

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await inner(request, context)
            finally:
                done()

        behavior = unary
    done = weakref.finalize(behavior, release)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
