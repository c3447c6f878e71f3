"""Stream behaviour on the embedded bus: bulk submission, backpressure, limits,
reflection, and a server that survives whatever it is sent."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange_client import ExchangeClient, RateLimited, ValidationError
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.audit.entries import AuditEntry, AuditQuery
from exchange.auth import new_certificate_binding
from exchange.model import Tlp
from exchange.subscriptions import Batch, Notice, subscription_request
from tests.certs import CertificateAuthority
from tests.helpers import (
    PartnerCredentials,
    ServerThread,
    bundle,
    indicator,
    settings_for,
    wait_until,
)
from tests.stalled_subscriber import StalledSubscriber


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    srv = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"max_open": 3, "max_batch": 50})
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def ngo(server: ServerThread) -> PartnerCredentials:
    return server.add_partner("harbor-light")


def test_submit_stream_answers_each_bundle_in_order(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    bundles = [
        bundle([indicator(ngo.identity, n=i * 10 + j, tlp=Tlp.GREEN) for j in range(10)])
        for i in range(20)
    ]
    with ExchangeClient(server.target, token=ngo.token) as c:
        results = list(c.submit_stream(bundles))
    assert [r.accepted for r in results] == [[o["id"] for o in b["objects"]] for b in bundles]


def test_reflection_and_health_list_the_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "exchange.v1.ExchangeService" in services
    assert "grpc.health.v1.Health" in services


def test_a_subscriber_that_does_not_read_holds_back_the_server(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    """Backpressure: the server stops reading the bus when the client stops
    reading the stream, instead of buffering the whole feed in memory."""
    padding = "x" * 2000
    total = 6000
    with ExchangeClient(server.target, token=ngo.token) as c:
        for start in range(0, total, 1000):
            objs = [
                indicator(ngo.identity, n=i, tlp=Tlp.GREEN, description=padding)
                for i in range(start, start + 1000)
            ]
            assert c.submit(bundle(objs)).ok
    assert server.server is not None
    subs = server.server.subscriptions
    with ExchangeClient(server.target, token=ngo.token) as c:
        sub = c.subscribe(from_beginning=True)
        first = next(sub)  # one delivery taken, then the client stops reading
        assert first.object_id
        # Wait until the server-side stream stops advancing (flow control holds it).
        last, still_since = -1, time.monotonic()

        def settled() -> bool:
            nonlocal last, still_since
            if subs.delivered != last:
                last, still_since = subs.delivered, time.monotonic()
            return time.monotonic() - still_since > 1.0

        wait_until(settled, 30, "the server-side stream to stop advancing")
        assert subs.delivered < total, (
            "the server read the whole feed for a client that reads nothing"
        )
        rest = sum(1 for _ in zip(range(total - 1), sub, strict=False))
        sub.cancel()
    assert rest == total - 1


def test_open_subscriptions_are_capped(server: ServerThread, ngo: PartnerCredentials) -> None:
    with ExchangeClient(server.target, token=ngo.token) as c:
        c.submit(bundle([indicator(ngo.identity, tlp=Tlp.GREEN)]))
        subs = [c.subscribe(from_beginning=True) for _ in range(3)]
        for s in subs:
            next(s)
        with pytest.raises(RateLimited):
            next(c.subscribe(from_beginning=True))
        for s in subs:
            s.cancel()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.lists(json_values, max_size=5).map(
        lambda objs: json.dumps({"type": "bundle", "objects": objs}).encode()
    )
)
def test_the_server_survives_any_input(
    server: ServerThread, ngo: PartnerCredentials, raw: bytes
) -> None:
    with ExchangeClient(server.target, token=ngo.token) as c:
        try:
            result = c.submit(raw)
        except ValidationError as exc:
            assert str(exc)  # noqa: PT017 (any input: either outcome is fine)
        else:
            assert all(r.reason for r in result.rejected)
        # Still serving, and nothing hostile was accepted into the feed.
        assert c.submit(bundle([])).results == []


def test_worker_processes_keep_bundle_order(tmp_path: Path) -> None:
    """Large bundles are split over worker processes; answers stay in bundle order."""
    srv = ServerThread(settings_for(tmp_path / "data", validation_workers=2)).start()
    try:
        ngo = srv.add_partner("harbor-light")
        objs = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(101)]
        objs[77]["confidence"] = 101
        with ExchangeClient(srv.target, token=ngo.token) as c:
            result = c.submit(bundle(objs))
        assert [r.object_id for r in result.results] == [o["id"] for o in objs]
        assert [r.index for r in result.results] == list(range(101))
        assert [(r.index, r.property) for r in result.rejected] == [(77, "confidence")]
    finally:
        srv.stop()


def test_a_bundle_over_the_size_limit_gets_a_reason(tmp_path: Path) -> None:
    srv = ServerThread(
        settings_for(tmp_path / "data", limits={"max_bundle_bytes": 100_000})
    ).start()
    try:
        ngo = srv.add_partner("harbor-light")
        big = [indicator(ngo.identity, n=i, description="x" * 1000) for i in range(200)]
        with ExchangeClient(srv.target, token=ngo.token) as c:
            with pytest.raises(ValidationError) as info:
                c.submit(bundle(big))
            assert "100,000" in str(info.value)
            # Nothing of it was stored: the same objects in small bundles are all new.
            assert len(c.submit(bundle(big[:50])).accepted) == 50
    finally:
        srv.stop()


def test_a_foreign_cursor_is_refused(server: ServerThread, ngo: PartnerCredentials) -> None:
    with ExchangeClient(server.target, token=ngo.token) as c:
        with pytest.raises(ValidationError, match="cursor"):
            next(c.subscribe(cursor="not-a-cursor"))
        # The stream was refused, not the partner: a valid one still opens.
        c.submit(bundle([indicator(ngo.identity, tlp=Tlp.GREEN)]))
        assert next(c.subscribe(from_beginning=True)).object_id


# -- bounded streams (issue 11: defects 2, 3, 6, 7) -----------------------------------------


def _subscribe(
    server: ServerThread, who: PartnerCredentials, request: exchange_pb2.SubscribeRequest
) -> Generator[exchange_pb2.SubscribeResponse]:
    """A raw Subscribe call (no SDK in between), cancelled when the caller stops."""
    with grpc.insecure_channel(
        server.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        call = exchange_pb2_grpc.ExchangeServiceStub(channel).Subscribe(
            request, metadata=(("authorization", f"Bearer {who.token}"),), timeout=60
        )
        try:
            yield from call
        finally:
            call.cancel()  # type: ignore[no-untyped-call]


def _delivered(server: ServerThread) -> list[str]:
    """The object ids the DELIVER entries list, once per delivery recorded."""
    return [listed[0] for e in _entries(server, action="deliver") for listed in e.event.objects]


def _entries(server: ServerThread, **query: Any) -> list[AuditEntry]:
    assert server.server is not None
    server.run(server.server.recorder.flush())
    return server.run(server.server.store.audit_entries(AuditQuery(**query, limit=100_000)))


def test_batches_are_capped_in_bytes_and_a_larger_object_goes_alone(tmp_path: Path) -> None:
    srv = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"max_batch_bytes": 150_000})
    ).start()
    try:
        ngo = srv.add_partner("harbor-light")
        objs = [
            indicator(ngo.identity, n=i, tlp=Tlp.GREEN, description="x" * 50_000) for i in range(12)
        ]
        # Over max_batch_bytes by itself: a message of its own.
        objs.insert(
            5,
            indicator(
                ngo.identity,
                n=99,
                tlp=Tlp.GREEN,
                description="y" * 90_000,
                external_references=[{"source_name": "hotline", "description": "z" * 90_000}],
            ),
        )
        with ExchangeClient(srv.target, token=ngo.token) as c:
            assert c.submit(bundle(objs)).ok
        srv.wait_published()
        messages: list[list[exchange_pb2.Delivery]] = []
        got = 0
        for response in _subscribe(srv, ngo, exchange_pb2.SubscribeRequest(from_beginning=True)):
            if response.deliveries:
                messages.append(list(response.deliveries))
                got += len(response.deliveries)
            if got >= len(objs):
                break
        assert [d.object_id for m in messages for d in m] == [o["id"] for o in objs]
        for message in messages:
            weight = sum(len(d.object) for d in message)
            assert len(message) == 1 or weight <= 150_000, [len(d.object) for d in message]
        assert [len(m) for m in messages if len(m[0].object) > 150_000] == [1]
        # Each object was recorded as delivered once (the last one once its write
        # completed, which the subscriber leaving right after receiving it can delay).
        wait_until(lambda: len(_delivered(srv)) >= len(objs), 30, "the last entries")
        assert sorted(_delivered(srv)) == sorted(o["id"] for o in objs)
    finally:
        srv.stop()


def test_one_partner_cannot_take_every_subscription_slot(tmp_path: Path) -> None:
    srv = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"max_open": 10, "max_open_per_partner": 2})
    ).start()
    streams: list[Generator[exchange_pb2.SubscribeResponse]] = []
    try:
        assert srv.server is not None
        subs = srv.server.subscriptions
        greedy = srv.add_partner("kestrel-social", sector="technology")
        other = srv.add_partner("harbor-light")
        now = exchange_pb2.SubscribeRequest()
        mine = [_subscribe(srv, greedy, now) for _ in range(2)]
        streams += mine
        for stream in mine:
            assert next(stream).cursor  # established
        with pytest.raises(grpc.RpcError) as refused:
            next(_subscribe(srv, greedy, now))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Named, with how many it has open (refused by the admission interceptor, before
        # the request is read, or by the subscriptions for a caller it cannot recognise).
        assert re.search(r"ha(s|ve) 2 ", str(refused.value.details()))
        assert "subscriptions.max_open_per_partner = 2" in str(refused.value.details())
        # Another partner still subscribes, up to its own limit, and receives.
        theirs = [_subscribe(srv, other, now) for _ in range(2)]
        streams += theirs
        for stream in theirs:
            assert next(stream).cursor
        green = indicator(other.identity, tlp=Tlp.GREEN)
        with ExchangeClient(srv.target, token=other.token) as c:
            assert c.submit(bundle([green])).ok
        for stream in theirs:
            delivered = next(r for r in stream if r.deliveries)
            assert [d.object_id for d in delivered.deliveries] == [green["id"]]
        # A stream closed gives its slot back.
        mine[0].close()
        wait_until(lambda: subs.open_of(greedy.partner_id) == 1, 30, "the slot to be freed")
        again = _subscribe(srv, greedy, now)
        streams.append(again)
        assert next(again).cursor
        refusals = srv.server.metrics.limit_refusals.labels("subscriptions.max_open_per_partner")
        assert refusals._value.get() == 1
    finally:
        for stream in streams:
            stream.close()
        srv.stop()


def test_a_certificate_signed_partner_is_held_to_its_stream_limit_too(tmp_path: Path) -> None:
    """Without a token the admission interceptor cannot tell who calls (it sees the
    metadata, not the TLS peer): the subscriptions count the partner's streams again."""
    ca = CertificateAuthority(tmp_path / "pki")
    issued = ca.issue("exchange-server", server=True)
    tls = {
        "cert_file": str(issued.cert),
        "key_file": str(issued.key),
        "client_ca_file": str(ca.cert),
    }
    srv = ServerThread(
        settings_for(tmp_path / "data", tls=tls, subscriptions={"max_open_per_partner": 2})
    ).start()
    try:
        assert srv.server is not None
        subs = srv.server.subscriptions
        ngo = srv.add_partner("harbor-light")
        cert = ca.issue("harbor-light")
        srv.run(srv.server.store.add_credential(new_certificate_binding(ngo.partner_id, cert.pem)))
        with ExchangeClient(
            f"localhost:{srv.port}", ca_file=ca.cert, cert_file=cert.cert, key_file=cert.key
        ) as client:
            mine = [client.subscribe(reconnect=False) for _ in range(2)]
            wait_until(lambda: subs.open_of(ngo.partner_id) == 2, 30, "two open streams")
            with pytest.raises(RateLimited) as refused:
                next(client.subscribe(reconnect=False))
            assert "you have 2 Subscribe streams open" in str(refused.value)
            assert "subscriptions.max_open_per_partner = 2" in str(refused.value)
            for sub in mine:
                sub.cancel()
        wait_until(lambda: subs.open_of(ngo.partner_id) == 0, 30, "the streams to close")
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"cursor": "A" * 70_000}, "cursor is 70,000 characters, over the 65,536"),
        ({"cursor": "e30" * 5_000_000}, "cursor is 15,000,000 characters"),
        ({"labels": ["trafficking"] * 1000}, "labels holds 1,000 values, over the 64"),
        ({"labels": ["x" * 12_000_000]}, "labels holds a label of 12,000,000 characters"),
        ({"labels": ["line\nbreak"]}, "control or invisible character"),
        ({"types": ["x-" + "a" * 300]}, "not a STIX type name"),
        ({"types": ["Indicator"]}, "not a STIX type name"),
        ({"types": [f"t{i:03d}" for i in range(65)]}, "types holds 65 values, over the 64"),
    ],
)
def test_request_fields_are_bounded_before_anything_is_recorded(
    server: ServerThread, ngo: PartnerCredentials, fields: dict[str, Any], named: str
) -> None:
    before = _entries(server, partner=ngo.partner_id)
    with pytest.raises(grpc.RpcError) as refused:
        next(_subscribe(server, ngo, exchange_pb2.SubscribeRequest(**fields)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = str(refused.value.details())
    assert named in detail and len(detail) < 400
    # Refused before anything was recorded: the log did not grow.
    assert _entries(server, partner=ngo.partner_id) == before


def test_a_stream_start_records_checked_values_and_only_the_cursor_digest(
    server: ServerThread, ngo: PartnerCredentials
) -> None:
    with ExchangeClient(server.target, token=ngo.token) as c:
        c.submit(bundle([indicator(ngo.identity, tlp=Tlp.GREEN)]))
    first = next(_subscribe(server, ngo, exchange_pb2.SubscribeRequest(from_beginning=True)))
    request = exchange_pb2.SubscribeRequest(
        cursor=first.cursor, types=["indicator"], labels=["trafficking:recruitment"]
    )
    assert next(_subscribe(server, ngo, request)).cursor == first.cursor
    (start,) = [
        e for e in _entries(server, action="subscribe.start") if e.event.detail["start"] == "cursor"
    ]
    assert start.event.detail == {
        "start": "cursor",
        "cursor_sha256": hashlib.sha256(first.cursor.encode()).hexdigest(),
        "types": ["indicator"],
        "labels": ["trafficking:recruitment"],
    }


def test_a_stalled_subscriber_is_cut_off_and_nothing_unsent_is_recorded(tmp_path: Path) -> None:
    """Defect 2: a client that answers pings but never opens its flow-control window.
    After stall_timeout_s the server marks its stream stalled; the message gRPC could
    not send is recorded as delivered only if it goes out after all (the client reads
    again, and then gets UNAVAILABLE naming the setting); until then the stream keeps
    its place in the partner's limit."""
    srv = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"stall_timeout_s": 2.0})
    ).start()
    stalled: StalledSubscriber | None = None
    try:
        assert srv.server is not None
        subs = srv.server.subscriptions
        ngo = srv.add_partner("harbor-light")
        objs = [
            indicator(ngo.identity, n=i, tlp=Tlp.GREEN, description="x" * 50_000) for i in range(20)
        ]
        with ExchangeClient(srv.target, token=ngo.token) as c:
            assert c.submit(bundle(objs)).ok
        srv.wait_published()
        stalled = StalledSubscriber(
            srv.target, ngo.token, exchange_pb2.SubscribeRequest(from_beginning=True)
        )
        stalls = srv.server.metrics.subscriptions_stalled
        wait_until(lambda: stalls._value.get() == 1, 30, "the stream to be found stalled")
        assert stalled.received < 100_000  # the first window's worth, at most
        # Nothing it did not receive was recorded as delivered to it, and its stream
        # keeps its place in the partner's limit while gRPC holds its message.
        assert _entries(srv, action="deliver") == []
        assert subs.open_of(ngo.partner_id) == 1

        # It reads again: the message it was sent arrives, then the status.
        stalled.resume()
        wait_until(lambda: stalled is not None and stalled.ended, 30, "the status")
        assert stalled.status == grpc.StatusCode.UNAVAILABLE.value[0], stalled.message
        assert "subscriptions.stall_timeout_s" in stalled.message
        assert "resume from the cursor of the last message you received" in stalled.message
        got = [d.object_id for r in stalled.responses() for d in r.deliveries]
        assert got and got == [o["id"] for o in objs[: len(got)]]
        wait_until(lambda: subs.open_of(ngo.partner_id) == 0, 30, "the slot to be freed")
        assert sorted(_delivered(srv)) == sorted(got)
        (end,) = _entries(srv, action="subscribe.end")
        assert "subscriptions.stall_timeout_s" in str(end.event.detail["reason"])
        assert end.event.detail["deliveries"] == len(got)
        # Resuming from its last cursor, it gets the rest, each object once.
        last = stalled.responses()[-1].cursor
        rest: list[str] = []
        for response in _subscribe(srv, ngo, exchange_pb2.SubscribeRequest(cursor=last)):
            rest += [d.object_id for d in response.deliveries]
            if len(got) + len(rest) >= len(objs):
                break
        assert got + rest == [o["id"] for o in objs]
    finally:
        if stalled is not None:
            stalled.close()
        srv.stop()


def test_a_stalled_stream_keeps_its_slot_until_its_connection_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = ServerThread(
        settings_for(
            tmp_path / "data",
            subscriptions={"stall_timeout_s": 2.0, "max_open_per_partner": 1},
        )
    ).start()
    stalled: StalledSubscriber | None = None
    try:
        assert srv.server is not None
        subs = srv.server.subscriptions
        ngo = srv.add_partner("harbor-light")
        with ExchangeClient(srv.target, token=ngo.token) as c:
            assert c.submit(
                bundle(indicator(ngo.identity, n=i, description="x" * 50_000) for i in range(5))
            ).ok
        srv.wait_published()
        stalled = StalledSubscriber(
            srv.target, ngo.token, exchange_pb2.SubscribeRequest(from_beginning=True)
        )
        wait_until(
            lambda: (
                srv.server is not None
                and bool(srv.server.metrics.subscriptions_stalled._value.get())
            ),
            30,
            "the stream to stall",
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(_subscribe(srv, ngo, exchange_pb2.SubscribeRequest()))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stalled.close()
        wait_until(lambda: subs.open_of(ngo.partner_id) == 0, 30, "the slot to be freed")
        # What it received was recorded as delivered; the message gRPC could not send
        # before the connection closed was not, and the failed write is the
        # subscriber's doing, not a fault of the exchange.
        received = {d.object_id for r in stalled.responses() for d in r.deliveries}
        assert set(_delivered(srv)) == received
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

        def opens() -> bool:
            # Admission (before the request is read) lets go of the call as it unwinds.
            try:
                return bool(next(_subscribe(srv, ngo, exchange_pb2.SubscribeRequest())).cursor)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return False

        wait_until(opens, 30, "a new stream of the partner to open")
    finally:
        if stalled is not None:
            stalled.close()
        srv.stop()


def test_a_subscriber_gone_during_a_write_is_recorded_as_perhaps_delivered(
    tmp_path: Path,
) -> None:
    """A write can end just before the subscriber's cancellation reaches the stream:
    the message arrived, but the stream never learns its write ended. Such a message
    is recorded (marked unconfirmed): the log may list a receipt that did not happen,
    never miss one that did."""
    srv = ServerThread(settings_for(tmp_path / "data")).start()
    try:
        assert srv.server is not None
        server = srv.server
        ngo = srv.add_partner("harbor-light")
        objs = [indicator(ngo.identity, n=i, tlp=Tlp.GREEN) for i in range(3)]
        with ExchangeClient(srv.target, token=ngo.token) as c:
            assert c.submit(bundle(objs)).ok
        srv.wait_published()

        async def cut_off_while_sending() -> list[str]:
            caller = await server.auth.authenticate([("authorization", f"Bearer {ngo.token}")])
            request = subscription_request([], [], cursor=None, from_beginning=True, max_batch=100)
            sent: list[str] = []
            handed = asyncio.Event()

            async def send(batch: Batch) -> None:
                if not batch.deliveries:
                    return  # where the stream starts
                # The message goes out; the cancellation lands before the write returns.
                sent.extend(
                    d.stored.object_id for d in batch.deliveries if isinstance(d.stored, Notice)
                )
                sent.extend(
                    d.stored.obj.object_id
                    for d in batch.deliveries
                    if not isinstance(d.stored, Notice)
                )
                handed.set()
                await asyncio.Event().wait()

            stream = asyncio.create_task(
                server.subscriptions.serve(server.auth.access(caller), request, send)
            )
            await asyncio.wait_for(handed.wait(), 30)
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
            return sent

        sent = srv.run(cut_off_while_sending())
        assert sorted(sent) == sorted(o["id"] for o in objs)
        assert sorted(_delivered(srv)) == sorted(sent)
        delivers = _entries(srv, action="deliver")
        assert all(e.event.detail["confirmed"] is False for e in delivers)
        (end,) = _entries(srv, action="subscribe.end")
        assert end.event.detail["deliveries"] == len(sent)
    finally:
        srv.stop()
