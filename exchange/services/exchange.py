"""ExchangeService: Submit, SubmitStream, Subscribe."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from exchange_client._pb import exchange_pb2 as pb
from exchange_client._pb import exchange_pb2_grpc as pb_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from exchange.auth import Authenticator
from exchange.errors import InvalidBundle
from exchange.ingest import Ingest
from exchange.model import ObjectOutcome, ObjectResult, Tlp
from exchange.services._status import guard_stream, guard_unary
from exchange.subscriptions import Batch, SubscriptionRequest, Subscriptions

__all__ = ["ExchangeService"]

Context = grpc.aio.ServicerContext[Any, Any]

_OUTCOME = {
    ObjectOutcome.ACCEPTED: pb.OUTCOME_ACCEPTED,
    ObjectOutcome.DUPLICATE: pb.OUTCOME_DUPLICATE,
    ObjectOutcome.REJECTED: pb.OUTCOME_REJECTED,
}
_TLP = {
    Tlp.CLEAR: pb.TLP_CLEAR,
    Tlp.GREEN: pb.TLP_GREEN,
    Tlp.AMBER: pb.TLP_AMBER,
    Tlp.AMBER_STRICT: pb.TLP_AMBER_STRICT,
    Tlp.RED: pb.TLP_RED,
}


class ExchangeService(pb_grpc.ExchangeServiceServicer):
    def __init__(self, auth: Authenticator, ingest: Ingest, subscriptions: Subscriptions) -> None:
        self._auth = auth
        self._ingest = ingest
        self._subscriptions = subscriptions

    @guard_unary
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        partner = await self._auth.partner(context.invocation_metadata() or ())
        return submit_response(await self._ingest.submit(partner, request.bundle))

    @guard_stream
    async def SubmitStream(
        self, request_iterator: AsyncIterator[pb.SubmitStreamRequest], context: Context
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        partner = await self._auth.partner(context.invocation_metadata() or ())
        async for request in request_iterator:
            try:
                results = await self._ingest.submit(partner, request.bundle)
            except InvalidBundle as exc:
                yield pb.SubmitStreamResponse(request_id=request.request_id, error=exc.message)
                continue
            yield pb.SubmitStreamResponse(
                request_id=request.request_id, result=submit_response(results)
            )

    @guard_stream
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse]:
        partner = await self._auth.partner(context.invocation_metadata() or ())
        which = request.WhichOneof("start")
        wanted = SubscriptionRequest(
            types=frozenset(request.types),
            labels=frozenset(request.labels),
            cursor=request.cursor if which == "cursor" else None,
            from_beginning=which == "from_beginning" and request.from_beginning,
            max_batch=request.max_batch,
        )
        async for batch in self._subscriptions.stream(partner, wanted):
            yield subscribe_response(batch)


def submit_response(results: list[ObjectResult]) -> pb.SubmitResponse:
    response = pb.SubmitResponse()
    counts = dict.fromkeys(ObjectOutcome, 0)
    for r in results:
        counts[r.outcome] += 1
        item = response.results.add(
            object_id=r.object_id, version=r.version, outcome=_OUTCOME[r.outcome], index=r.index
        )
        if r.rejection is not None:
            item.rejection.property = r.rejection.property
            item.rejection.expected = r.rejection.expected
            item.rejection.message = r.rejection.message
    response.accepted_count = counts[ObjectOutcome.ACCEPTED]
    response.duplicate_count = counts[ObjectOutcome.DUPLICATE]
    response.rejected_count = counts[ObjectOutcome.REJECTED]
    return response


def subscribe_response(batch: Batch) -> pb.SubscribeResponse:
    response = pb.SubscribeResponse(cursor=batch.cursor)
    for d in batch.deliveries:
        obj = d.stored.obj
        accepted_at = Timestamp()
        accepted_at.FromNanoseconds(int(d.stored.accepted_at * 1e9))
        response.deliveries.add(
            object=obj.body,
            object_id=obj.object_id,
            object_type=obj.object_type,
            version=obj.version,
            submitter=d.stored.submitter,
            submitter_identity=obj.created_by_ref,
            tlp=_TLP[obj.tlp],
            accepted_at=accepted_at,
            cursor=d.cursor,
        )
    return response
