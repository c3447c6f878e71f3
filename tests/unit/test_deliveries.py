"""Subscribe's encoded messages (exchange.services._deliveries) are the messages
``subscribe_response`` builds: byte for byte what protobuf serialises, and parsed back
the same message, whatever the batch holds; and the server registers the service as the
generated code does, but for Subscribe's pass-through serializer."""

from __future__ import annotations

from typing import Any

import grpc
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb import exchange_pb2_grpc as pb_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.model import Audience, StoredObject, Tlp, ValidObject
from exchange.services._deliveries import subscribe_response_bytes
from exchange.services.exchange import (
    ExchangeService,
    add_exchange_service,
    subscribe_response,
)
from exchange.subscriptions import Batch, Delivery

CURSOR = "eyJ2IjoxLCJwIjpbWyJjbGVhciIsMCwxMiw0XSAg"


def stored(
    n: int = 0,
    *,
    body: bytes | None = None,
    tlp: Tlp = Tlp.GREEN,
    identity: str = "identity--5f3c9a0e-7e1d-4b39-9a35-0a6f6a2b7c11",
    accepted_at: float = 1_764_000_000.123456,
    submitter: str = "kestrel",
) -> StoredObject:
    object_id = f"indicator--00000000-0000-4000-8000-{n:012d}"
    if body is None:
        body = b'{"type":"indicator","id":"%s","name":"lure #%d"}' % (object_id.encode(), n)
    return StoredObject(
        seq=n,
        submitter=submitter,
        accepted_at=accepted_at,
        obj=ValidObject(
            object_id=object_id,
            object_type="indicator",
            version="2026-01-01T00:00:00.000Z",
            created_by_ref=identity,
            tlp=tlp,
            body=body,
        ),
        audience=Audience(tlp=tlp, submitter=submitter),
    )


def check(batch: Batch) -> bytes:
    """The encoded batch is protobuf's own encoding of the reference message."""
    expected = subscribe_response(batch)
    data = subscribe_response_bytes(batch)
    assert data == expected.SerializeToString()
    assert pb.SubscribeResponse.FromString(data) == expected
    return data


def test_several_deliveries_each_with_its_own_cursor() -> None:
    records = [stored(n) for n in range(5)]
    batch = Batch([Delivery(s, f"{CURSOR}{n}") for n, s in enumerate(records)], CURSOR + "end")
    parsed = pb.SubscribeResponse.FromString(check(batch))
    assert [d.cursor for d in parsed.deliveries] == [f"{CURSOR}{n}" for n in range(5)]
    assert [d.object for d in parsed.deliveries] == [s.obj.body for s in records]
    assert parsed.cursor == CURSOR + "end"


def test_empty_batches() -> None:
    assert pb.SubscribeResponse.FromString(check(Batch([], CURSOR))).cursor == CURSOR
    assert check(Batch([], "")) == b""


def test_every_tlp() -> None:
    batch = Batch([Delivery(stored(n, tlp=tlp), CURSOR) for n, tlp in enumerate(Tlp)], CURSOR)
    parsed = pb.SubscribeResponse.FromString(check(batch))
    assert [d.tlp for d in parsed.deliveries] == [
        pb.TLP_CLEAR,
        pb.TLP_GREEN,
        pb.TLP_AMBER,
        pb.TLP_AMBER_STRICT,
        pb.TLP_RED,
    ]


def test_unicode_bodies_and_fields() -> None:
    body = '{"name":"Anwerbung über ein Jobportal — 招聘 🚩","labels":["ç"]}'.encode()
    record = stored(1, body=body, submitter="ngo-ñandú", identity="identity--ü")
    parsed = pb.SubscribeResponse.FromString(check(Batch([Delivery(record, CURSOR)], CURSOR)))
    assert parsed.deliveries[0].object.decode() == body.decode()
    assert parsed.deliveries[0].submitter == "ngo-ñandú"


def test_large_bodies_and_cursors() -> None:
    # Lengths past one and two varint bytes, and past the table of short lengths.
    for size in (127, 128, 16_383, 16_384, 3 * 1024 * 1024):
        record = stored(size, body=b"x" * size)
        check(Batch([Delivery(record, CURSOR), Delivery(stored(2), CURSOR)], CURSOR))
    long_cursor = "A" * 20_000
    check(Batch([Delivery(stored(3), long_cursor)], long_cursor))


def test_fields_proto3_leaves_out() -> None:
    # Empty strings and bytes are not on the wire; a zero timestamp still is.
    record = stored(4, body=b"", identity="", accepted_at=0.0)
    check(Batch([Delivery(record, ""), Delivery(record, CURSOR)], ""))


def test_a_record_is_encoded_once_for_every_stream() -> None:
    record = stored(5)
    assert record.delivery_fields is None
    first = check(Batch([Delivery(record, CURSOR + "a")], CURSOR))
    shared = record.delivery_fields
    assert shared is not None
    second = check(Batch([Delivery(record, CURSOR + "bb")], CURSOR))
    assert record.delivery_fields is shared
    assert first != second
    # The cache is no part of the record's value.
    assert record == stored(5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=300),
            st.text(max_size=40),
            st.sampled_from(list(Tlp)),
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
        ),
        max_size=8,
    ),
    st.text(max_size=200),
)
def test_any_batch(items: list[tuple[bytes, str, Tlp, float, str]], cursor: str) -> None:
    deliveries = [
        Delivery(stored(n, body=body, submitter=submitter, tlp=tlp, accepted_at=at), text)
        for n, (body, submitter, tlp, at, text) in enumerate(items)
    ]
    check(Batch(deliveries, cursor))


class _Registrations:
    """What a service registers on a server (no server is built in a unit test)."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.registered[service] = handlers


def test_the_service_is_registered_as_generated_but_subscribe_writes_bytes() -> None:
    service = ExchangeService.__new__(ExchangeService)
    ours, generated = _Registrations(), _Registrations()
    add_exchange_service(service, ours)  # type: ignore[arg-type]
    pb_grpc.add_ExchangeServiceServicer_to_server(service, generated)  # type: ignore[arg-type]
    name = pb.DESCRIPTOR.services_by_name["ExchangeService"].full_name
    assert len(ours.generic) == len(generated.generic) == 1
    assert ours.registered.keys() == generated.registered.keys() == {name}
    mine, theirs = ours.registered[name], generated.registered[name]
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["ExchangeService"].methods}
    assert mine.keys() == theirs.keys() == methods
    for method, handler in mine.items():
        other = theirs[method]
        assert handler.request_streaming == other.request_streaming
        assert handler.response_streaming == other.response_streaming
        assert handler.request_deserializer == other.request_deserializer
        behaviour = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        assert behaviour == getattr(service, method)
        if method == "Subscribe":
            assert handler.response_serializer is None
        else:
            assert handler.response_serializer == other.response_serializer
