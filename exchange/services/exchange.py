"""ExchangeService: Submit, SubmitStream, Subscribe, GetObject, Erase."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb import exchange_pb2_grpc as pb_grpc

from exchange import policy
from exchange.audit.recorder import AuditRecorder
from exchange.auth import Authenticator, Caller, require
from exchange.erasure import erase, erase_reason
from exchange.errors import InvalidArgument, ResourceExhausted, Unavailable
from exchange.ingest import Ingest
from exchange.lookup import get_object
from exchange.model import (
    AudienceRequest,
    Erasure,
    ObjectOutcome,
    ObjectResult,
    PartnerKind,
    Role,
)
from exchange.services._convert import kind_from_pb
from exchange.services._deliveries import fill_delivery, subscribe_response_bytes
from exchange.services._status import guard_stream, guard_unary
from exchange.store import Store
from exchange.subscriptions import Batch, Subscriptions, subscription_request

__all__ = ["ExchangeService", "add_exchange_service", "subscribe_response"]

Context = grpc.aio.ServicerContext[Any, Any]

_OUTCOME = {
    ObjectOutcome.ACCEPTED: pb.OUTCOME_ACCEPTED,
    ObjectOutcome.DUPLICATE: pb.OUTCOME_DUPLICATE,
    ObjectOutcome.REJECTED: pb.OUTCOME_REJECTED,
}


# Far above any STIX id or timestamp; keeps look-ups (and their audit entries) small.
_MAX_ID = 256


class ExchangeService(pb_grpc.ExchangeServiceServicer):
    def __init__(
        self,
        auth: Authenticator,
        ingest: Ingest,
        subscriptions: Subscriptions,
        store: Store,
        recorder: AuditRecorder,
        *,
        on_erased: Callable[[list[Erasure]], None] | None = None,
    ) -> None:
        self._auth = auth
        self._ingest = ingest
        self._subscriptions = subscriptions
        self._store = store
        self._recorder = recorder
        self._on_erased = on_erased

    async def _caller(self, context: Context, role: Role, action: str) -> Caller:
        caller = await self._auth.authenticate(
            context.invocation_metadata() or (), context.auth_context()
        )
        require(caller.partner, role, action)
        return caller

    @guard_unary
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        caller = await self._caller(context, Role.SUBMIT, "submit")
        audience = audience_request(request.audience)
        return submit_response(await self._ingest.submit(caller.partner, request.bundle, audience))

    @guard_stream
    async def SubmitStream(
        self, request_iterator: AsyncIterator[pb.SubmitStreamRequest], context: Context
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        caller = await self._caller(context, Role.SUBMIT, "submit")
        access = self._auth.access(caller)
        async for request in request_iterator:
            # A credential revoked while the stream is open stops it at the next bundle.
            partner = await access.current()
            require(partner, Role.SUBMIT, "submit")
            try:
                audience = audience_request(request.audience)
                results = await self._ingest.submit(partner, request.bundle, audience)
            except (InvalidArgument, ResourceExhausted) as exc:
                # About this bundle only: the stream goes on.
                yield pb.SubmitStreamResponse(request_id=request.request_id, error=exc.message)
                continue
            yield pb.SubmitStreamResponse(
                request_id=request.request_id, result=submit_response(results)
            )

    # It writes its messages itself (context.write: a delivery is recorded once its
    # message was written, and a stalled write is noticed), so it is guarded like a
    # unary handler. The messages are written encoded (add_exchange_service).
    @guard_unary
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> None:
        caller = await self._caller(context, Role.SUBSCRIBE, "subscribe")
        which = request.WhichOneof("start")
        wanted = subscription_request(
            request.types,
            request.labels,
            cursor=request.cursor if which == "cursor" else None,
            from_beginning=which == "from_beginning" and request.from_beginning,
            max_batch=request.max_batch,
        )

        async def send(batch: Batch) -> None:
            message = subscribe_response_bytes(batch)
            try:
                await context.write(message)
            except Exception as exc:
                # gRPC fails a write only when the call is over (the connection closed
                # under it, before the cancellation reaches this task): the message was
                # not sent; the subscriber went away, no fault of the exchange.
                raise Unavailable("the connection closed before this message was sent") from exc

        await self._subscriptions.serve(self._auth.access(caller), wanted, send)

    @guard_unary
    async def GetObject(
        self, request: pb.GetObjectRequest, context: Context
    ) -> pb.GetObjectResponse:
        caller = await self._caller(context, Role.SUBSCRIBE, "look objects up")
        if not request.object_id:
            raise InvalidArgument("object_id is empty; pass the STIX id of the object")
        if len(request.object_id) > _MAX_ID or len(request.version) > _MAX_ID:
            raise InvalidArgument(
                f"object_id and version are at most {_MAX_ID} characters; a STIX id is"
                " type--UUID and a version a timestamp"
            )
        for name, value in (("object_id", request.object_id), ("version", request.version)):
            if not value.isprintable():
                raise InvalidArgument(
                    f"{name} holds a control character (such as NUL); a STIX id is"
                    " type--UUID and a version a timestamp"
                )
        stored = await get_object(
            self._store, self._recorder, caller.partner, request.object_id, request.version or None
        )
        response = pb.GetObjectResponse()
        fill_delivery(response.delivery, stored, "")
        return response

    @guard_unary
    async def Erase(self, request: pb.EraseRequest, context: Context) -> pb.EraseResponse:
        # Creators erase: the role that lets a partner share is the one that takes back.
        caller = await self._caller(context, Role.SUBMIT, "erase")
        reason = erase_reason(request.reason)
        outcome = await erase(
            self._store, caller.partner, request.object_id, reason, on_erased=self._on_erased
        )
        first = outcome.erasures[0]
        response = pb.EraseResponse(
            object_id=first.object_id,
            versions=outcome.versions,
            reason=first.reason.value,
            already_erased=outcome.already_erased,
            referenced_by=sorted(
                {
                    oid
                    for e in outcome.erasures
                    for oid, audience in e.referenced_by
                    if policy.may_receive(caller.partner, audience)
                }
            ),
        )
        response.erased_at.FromNanoseconds(int(first.erased_at * 1e9))
        [row] = await self._store.audit_rows(first.audit_index, 1)
        response.receipt.log_index = row.log_index
        response.receipt.leaf_hash = row.leaf_hash
        response.receipt.entry = row.data
        return response


def add_exchange_service(service: ExchangeService, server: grpc.aio.Server) -> None:
    """Serve ``service``, as the generated ``add_ExchangeServiceServicer_to_server`` does,
    except that Subscribe writes its messages already encoded (bytes: each record's
    delivery is encoded once for every stream, exchange.services._deliveries), so its
    response serializer passes them through."""
    handlers = {
        "Submit": grpc.unary_unary_rpc_method_handler(
            service.Submit,
            request_deserializer=pb.SubmitRequest.FromString,
            response_serializer=pb.SubmitResponse.SerializeToString,
        ),
        "SubmitStream": grpc.stream_stream_rpc_method_handler(
            service.SubmitStream,
            request_deserializer=pb.SubmitStreamRequest.FromString,
            response_serializer=pb.SubmitStreamResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            service.Subscribe,
            request_deserializer=pb.SubscribeRequest.FromString,
            response_serializer=None,
        ),
        "GetObject": grpc.unary_unary_rpc_method_handler(
            service.GetObject,
            request_deserializer=pb.GetObjectRequest.FromString,
            response_serializer=pb.GetObjectResponse.SerializeToString,
        ),
        "Erase": grpc.unary_unary_rpc_method_handler(
            service.Erase,
            request_deserializer=pb.EraseRequest.FromString,
            response_serializer=pb.EraseResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    # As the generated code does (gRPC matches registered methods first); grpc-stubs
    # does not know the method yet.
    server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]


def audience_request(audience: pb.Audience) -> AudienceRequest:
    kinds: set[PartnerKind] = set()
    for value in audience.exclude_kinds:
        kind = kind_from_pb(value, "audience.exclude_kinds")
        if kind is None:
            raise InvalidArgument(
                "audience.exclude_kinds holds PARTNER_KIND_UNSPECIFIED; name a partner kind"
            )
        kinds.add(kind)
    return AudienceRequest(
        communities=frozenset(audience.communities),
        recipients=frozenset(audience.recipients),
        excluded_kinds=frozenset(kinds),
    )


def submit_response(results: list[ObjectResult]) -> pb.SubmitResponse:
    response = pb.SubmitResponse()
    counts = dict.fromkeys(ObjectOutcome, 0)
    for r in results:
        counts[r.outcome] += 1
        item = response.results.add(
            object_id=r.object_id, version=r.version, outcome=_OUTCOME[r.outcome], index=r.index
        )
        if r.notice:
            item.notice = r.notice
        if r.receipt is not None:
            item.receipt.log_index = r.receipt.log_index
            item.receipt.leaf_hash = r.receipt.leaf_hash
            item.receipt.entry = r.receipt.entry
        if r.rejection is not None:
            item.rejection.property = r.rejection.property
            item.rejection.expected = r.rejection.expected
            item.rejection.message = r.rejection.message
            for problem in r.rejection.all_problems:
                item.rejection.problems.add(
                    property=problem.property, expected=problem.expected, message=problem.message
                )
            item.rejection.more_problems = r.rejection.more_problems
    response.accepted_count = counts[ObjectOutcome.ACCEPTED]
    response.duplicate_count = counts[ObjectOutcome.DUPLICATE]
    response.rejected_count = counts[ObjectOutcome.REJECTED]
    return response


def subscribe_response(batch: Batch) -> pb.SubscribeResponse:
    """The message of ``batch``: what ``subscribe_response_bytes`` encodes (held equal by
    tests/unit/test_deliveries.py; bench/delivery.py compares their costs)."""
    response = pb.SubscribeResponse(cursor=batch.cursor)
    for d in batch.deliveries:
        fill_delivery(response.deliveries.add(), d.stored, d.cursor)
    return response
