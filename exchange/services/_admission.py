"""Admission: a partner's calls in progress, counted before their requests are read.

gRPC receives a call's whole request (up to the transport limit, ~17 MB for a
bundle) before the handler runs, so a limit checked in the handler comes too late:
forty concurrent 15 MB submissions from one partner held 2.3 GB in the server
before any could be refused. This interceptor runs first. It recognises the
partner by its bearer token (a digest look-up, cached until the registry changes),
counts the calls it has in progress per kind, and past the limit answers
RESOURCE_EXHAUSTED at once, without reading the request. Within the limit, a
partner's submissions take turns: a few are read and processed at once, the others
wait here, unread (measured with forty 15 MB submissions at once: 0.33 GB with two
at a time, 1.0 GB with three, 1.2 GB with four).

Credentials that sign no one in are refused here too, with the handler's own
words (``exchange.auth``), before the request is read: an unknown, revoked or
expired token, a disabled partner's, or none at all where no client certificate can
sign a caller in (a flood of 15 MB submissions with a made-up token took the server
to 1.6 GB while each was read, then refused). A call without a token where mutual
TLS is on may be signed in by its certificate, which gRPC shows the handler, not
interceptors: such calls are counted together, as one partner (``quota.NO_TOKEN``),
while their requests are read; once signed in, the handler's limits (bytes of
bundles being processed, streams open) apply per partner. What a partner may do
(its roles) is still decided by the handler.

A slot is given back when the call ends, and also when gRPC drops a call without
running its handler (the caller cancelled while sending): the wrapped behaviour's
finalizer does it, so no slot can leak.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import grpc
from exchange_protocol.pb import exchange_pb2 as pb

from exchange.auth import (
    MISSING_CREDENTIALS,
    RegistryWatch,
    bearer_token,
    check_credential,
    check_enabled,
    hash_token,
)
from exchange.errors import ExchangeError, ResourceExhausted, Unauthenticated, Unavailable
from exchange.model import Credential, CredentialKind, Partner
from exchange.quota import NO_TOKEN, PartnerQuota
from exchange.services._status import status_for
from exchange.store import RegistryStore

__all__ = ["Admission", "CallKind"]

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

_EXCHANGE = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
# Token digests remembered, with their credential and partner, while the registry
# does not change.
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

    def __init__(
        self,
        store: RegistryStore,
        quotas: Mapping[CallKind, PartnerQuota],
        watch: RegistryWatch,
        *,
        certificates: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._quotas = quotas
        self._watch = watch
        # Whether a client certificate alone can sign a caller in (mutual TLS).
        self._certificates = certificates
        self._clock = clock
        # Token digests the store knows, with their credential and partner, while the
        # registry does not change.
        self._known: OrderedDict[bytes, tuple[Credential, Partner]] = OrderedDict()
        self._generation = watch.generation

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        kind = kind_of(handler_call_details.method)
        if handler is None or kind is None:
            return handler
        try:
            partner_id = await self._partner_of(handler_call_details.invocation_metadata or ())
        except ExchangeError as refusal:
            # A token that signs no one in (unknown, revoked, expired, its partner
            # disabled), or no credentials at all where only a token can sign in: the
            # handler's own refusal, before the request is read.
            return _refusing(handler, refusal)
        # No token, and a client certificate may sign the caller in (or the store did not
        # answer): such calls are counted together, as one partner, while their requests
        # are read; then the handler signs the caller in, or refuses it, and the
        # partner's own limits take over.
        until_read = partner_id is None
        partner_id = NO_TOKEN if partner_id is None else partner_id
        quota = self._quotas[kind]
        try:
            # Past the limit: refused at once. Within it, a call may wait its turn here,
            # its request unread (submissions: a few at once per partner).
            await quota.enter(partner_id)
        except ResourceExhausted as refusal:
            return _refusing(handler, refusal)
        return _holding(handler, _on_loop(lambda: quota.leave(partner_id)), until_read)

    async def _partner_of(self, metadata: Any) -> str | None:
        """The partner the bearer token signs in. None without a token when a client
        certificate may do it, or when the store does not answer (the handler says
        so). Raises as the handler would for credentials that sign no one in."""
        token = bearer_token(metadata)
        if token is None:
            if self._certificates:
                return None
            raise Unauthenticated(MISSING_CREDENTIALS)
        digest = hash_token(token)
        if self._generation != self._watch.generation:
            # Revoked, disabled, re-granted: what was remembered may be wrong now.
            self._known.clear()
            self._generation = self._watch.generation
        found = self._known.get(digest)
        if found is None:
            try:
                found = await self._store.credential(CredentialKind.TOKEN, digest)
            except Unavailable:
                return None
            if found is not None:
                self._known[digest] = found
                if len(self._known) > _KNOWN_TOKENS:
                    self._known.popitem(last=False)
        else:
            self._known.move_to_end(digest)
        _, partner = check_credential(found, digest, "token", self._clock())
        check_enabled(partner)
        return partner.partner_id


def _on_loop(release: Callable[[], None]) -> Callable[[], None]:
    """``release`` run on the running event loop, from wherever it is called: a
    finalizer may run in any thread that drops the last reference, and the quotas
    (their futures) belong to the loop."""
    loop = asyncio.get_running_loop()

    def on_loop() -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            release()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(release)

    return on_loop


def _refusing(handler: Handler, refusal: ExchangeError) -> Handler:
    """A handler that answers ``refusal`` without reading the request: declared as
    taking a request stream, gRPC hands it the call before any message arrives."""

    async def refuse(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(status_for(refusal), refusal.message)

    serializer = {"response_serializer": handler.response_serializer}
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, **serializer)


def _holding(handler: Handler, release: Callable[[], None], until_read: bool) -> Handler:
    """``handler`` giving its slot back when the call ends (``until_read``: as soon as
    its handler runs, its request read), or when gRPC drops the call unrun (the
    finalizer of the wrapped behaviour; it runs once whichever comes first)."""
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
            if until_read:
                done()
            try:
                async with aclosing(inner(request, context)) as responses:
                    async for response in responses:
                        yield response
            finally:
                done()

        behavior = streaming
    else:  # a unary call, or a stream written with context.write

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if until_read:
                done()
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
