"""Attacks on Subscribe, against a real server process: subscribers that stall, a partner
that opens stream after stream, catch-up over large objects. Whatever one partner does,
the server's memory stays bounded and the other partners keep receiving."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import orjson
import pytest
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from exchange.model import Tlp
from tests.adversarial.harness import BUSES, Exchange, ExchangeFactory, Partner
from tests.helpers import bundle, indicator, wait_until
from tests.stalled_subscriber import StalledSubscriber

pytestmark = pytest.mark.timeout(600)

MB = 1024 * 1024


def submit_padded(
    exchange: Exchange, who: Partner, count: int, size: int, per_bundle: int = 100
) -> list[str]:
    """``count`` GREEN indicators of about ``size`` bytes each; their ids in order."""
    ids: list[str] = []
    with exchange.client(who, timeout=300) as client:
        for start in range(0, count, per_bundle):
            objs = [_padded(who, n, size) for n in range(start, min(count, start + per_bundle))]
            result = client.submit(bundle(objs))
            assert len(result.accepted) == len(objs), result.rejected[:3]
            ids += [o["id"] for o in objs]
    return ids


def _padded(who: Partner, n: int, size: int) -> dict[str, Any]:
    # A string property holds at most limits.max_string_length (100,000) characters.
    pieces = [
        {"source_name": f"hotline-{i}", "description": "x" * min(90_000, size - i * 90_000)}
        for i in range(1, (size + 89_999) // 90_000)
    ]
    extra: dict[str, Any] = {"external_references": pieces} if pieces else {}
    return indicator(who.identity, n=n, tlp=Tlp.GREEN, description="d" * min(90_000, size), **extra)


def stream_ids(
    exchange: Exchange, who: Partner, wanted: int, request: exchange_pb2.SubscribeRequest
) -> list[str]:
    """Object ids of the first ``wanted`` deliveries of a raw Subscribe call."""
    got: list[str] = []
    with grpc.insecure_channel(
        exchange.target, options=[("grpc.max_receive_message_length", 64 * MB)]
    ) as channel:
        call = exchange_pb2_grpc.ExchangeServiceStub(channel).Subscribe(
            request, metadata=(("authorization", f"Bearer {who.token}"),), timeout=300
        )
        for response in call:
            got += [d.object_id for d in response.deliveries]
            if len(got) >= wanted:
                break
        call.cancel()  # type: ignore[no-untyped-call]
    return got


class PeakMemory:
    """Samples the server's RSS in a thread until stopped; ``peak`` in bytes."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self.peak = exchange.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._exchange.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.peak


@BUSES
def test_stalled_subscribers_hold_bounded_memory_and_others_still_receive(
    exchange_factory: ExchangeFactory, bus: str
) -> None:
    """Defect 2: 20 streams from the beginning over 1,000 objects of ~50 KB whose
    clients never open their flow-control window took RSS from 178 MB to 2.1 GB."""
    exchange = exchange_factory(bus=bus, subscriptions={"stall_timeout_s": 5.0})
    source = exchange.add_partner("source")
    victim = exchange.add_partner("victim")
    # Five streams each: within the default per-partner limit (16).
    attackers = [exchange.add_partner(f"attacker-{i}") for i in range(4)]
    ids = submit_padded(exchange, source, 1000, 50_000)
    everything = exchange_pb2.SubscribeRequest(from_beginning=True)
    # Warm up (and wait for the relay): the victim reads it all once.
    assert sorted(stream_ids(exchange, victim, len(ids), everything)) == sorted(ids)
    baseline = exchange.rss_bytes()
    memory = PeakMemory(exchange)
    stalled: list[StalledSubscriber] = []
    try:
        for attacker in attackers:
            stalled += [
                StalledSubscriber(exchange.target, attacker.token, everything) for _ in range(5)
            ]
        wait_until(lambda: all(s.received for s in stalled), 60, "every stream to start")
        # The victim still receives everything, from the beginning and live.
        assert sorted(stream_ids(exchange, victim, len(ids), everything)) == sorted(ids)
        latencies = exchange.probe(victim, count=20)
        assert latencies.p99 < 1.0, latencies
        wait_until(
            lambda: exchange.metric("exchange_subscriptions_stalled_total") == 20,
            60,
            "the stalled streams to be ended",
        )
        peak = memory.stop()
        # What each stalled stream keeps: at most the message gRPC holds for it.
        assert peak - baseline < 400 * MB, (baseline // MB, peak // MB)
        assert not any(s.ended for s in stalled)  # they never read: nothing reached them
        assert exchange.metric("exchange_subscriptions_open") == 20
    finally:
        memory.stop()
        for s in stalled:
            s.close()
    # Their connections gone, so are their streams.
    wait_until(
        lambda: exchange.metric("exchange_subscriptions_open") == 0, 60, "the streams to close"
    )


def test_one_partner_cannot_take_every_subscription_slot(
    exchange_factory: ExchangeFactory,
) -> None:
    """Defect 6: 1,000 open streams of one partner made every other partner's Subscribe
    RESOURCE_EXHAUSTED. Now one partner gets at most max_open_per_partner (16)."""
    exchange = exchange_factory()
    greedy = exchange.add_partner("greedy")
    victim = exchange.add_partner("victim")
    now = exchange_pb2.SubscribeRequest()
    opened: list[Any] = []
    refused: list[grpc.RpcError] = []
    with grpc.insecure_channel(exchange.target) as channel:
        stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
        metadata = (("authorization", f"Bearer {greedy.token}"),)
        try:
            for _ in range(100):
                call = stub.Subscribe(now, metadata=metadata, timeout=120)
                try:
                    next(iter(call))
                except grpc.RpcError as exc:
                    refused.append(exc)
                else:
                    opened.append(call)
            assert len(opened) == 16 and len(refused) == 84
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "subscriptions.max_open_per_partner = 16" in str(refused[0].details())
            # Another partner subscribes and receives, while the greedy one holds its 16.
            green = indicator(victim.identity, tlp=Tlp.GREEN)
            with exchange.client(victim) as client:
                assert client.submit(bundle([green])).ok
            everything = exchange_pb2.SubscribeRequest(from_beginning=True)
            assert stream_ids(exchange, victim, 1, everything) == [green["id"]]
        finally:
            for call in opened:
                call.cancel()
    assert (
        exchange.metric("exchange_limit_refusals_total", limit="subscriptions.max_open_per_partner")
        == 84
    )


@BUSES
def test_catch_up_over_large_objects_completes_and_records_each_delivery_once(
    exchange_factory: ExchangeFactory, bus: str
) -> None:
    """Defect 3: 600 objects of ~140 KB made a 70 MB batch: RESOURCE_EXHAUSTED on the
    client, the same batch again on every resume, and 3 DELIVER entries per object for
    what was never delivered."""
    exchange = exchange_factory(bus=bus)
    source = exchange.add_partner("source")
    reader = exchange.add_partner("reader")
    ids = submit_padded(exchange, source, 600, 140_000)
    with exchange.client(reader, timeout=300) as client:
        got: list[str] = []
        subscription = client.subscribe(from_beginning=True, reconnect=False)
        for delivery in subscription:
            got.append(delivery.object_id)
            if len(got) == len(ids):
                break
        subscription.close()
    # Each once (in order per partition: on Kafka the objects are spread over two).
    assert sorted(got) == sorted(ids)

    def delivered() -> list[str]:
        lines = exchange.cli(
            "audit", "log", "--action", "deliver", "--partner", reader.partner_id,
            "--format", "jsonl",
        ).stdout.splitlines()  # fmt: skip
        entries = [orjson.loads(line) for line in lines if line.strip()]
        return [listed["object_id"] for e in entries for listed in e.get("objects", [])]

    # Recorded as each message was written (the last ones may take a moment).
    wait_until(lambda: len(delivered()) >= len(ids), 60, "the deliveries to be recorded")
    assert sorted(delivered()) == sorted(ids)


def test_a_stalled_subscriber_is_let_go_when_its_connection_is_recycled(
    exchange_factory: ExchangeFactory,
) -> None:
    """A subscriber that never reads again keeps its stream (and its place among its
    partner's streams) only until its connection reaches connection_max_age_s plus
    connection_grace_s: then the server closes it, and frees what the stream held."""
    exchange = exchange_factory(
        connection_max_age_s=3.0,
        connection_grace_s=2.0,
        subscriptions={"stall_timeout_s": 1.0, "max_open_per_partner": 2},
    )
    source = exchange.add_partner("source")
    wedged = exchange.add_partner("wedged")
    submit_padded(exchange, source, 40, 50_000)
    everything = exchange_pb2.SubscribeRequest(from_beginning=True)
    stalled = [StalledSubscriber(exchange.target, wedged.token, everything) for _ in range(2)]
    try:
        wait_until(lambda: all(s.received for s in stalled), 60, "both streams to start")
        wait_until(
            lambda: exchange.metric("exchange_subscriptions_stalled_total") == 2, 60, "stalls"
        )
        # Without reading or closing anything on the client's side, both streams end.
        wait_until(lambda: all(s.ended for s in stalled), 60, "the connections to be closed")
        wait_until(lambda: exchange.metric("exchange_subscriptions_open") == 0, 60, "streams freed")
        # And the partner has its places back: a stream of its own opens and delivers.
        assert len(stream_ids(exchange, wedged, 10, everything)) >= 10
    finally:
        for s in stalled:
            s.close()


@BUSES
def test_the_live_tail_holds_what_its_byte_window_allows(
    exchange_factory: ExchangeFactory, bus: str
) -> None:
    """Defect 4: the shared live tail kept 50,000 records whatever their size; after
    0.95 GB of 99 KB objects the server's RSS was 1.6 GB and rising. Here the window is
    16 MiB and 240 MB of objects flow past a live subscriber."""
    exchange = exchange_factory(bus=bus, subscriptions={"tail_window_bytes": 16 * MB})
    source = exchange.add_partner("source")
    reader = exchange.add_partner("reader")
    live = exchange_pb2.SubscribeRequest()  # from now: it follows the live tail
    got: list[str] = []
    with grpc.insecure_channel(
        exchange.target, options=[("grpc.max_receive_message_length", 64 * MB)]
    ) as channel:
        call = exchange_pb2_grpc.ExchangeServiceStub(channel).Subscribe(
            live, metadata=(("authorization", f"Bearer {reader.token}"),), timeout=600
        )
        responses = iter(call)
        next(responses)  # the stream's start

        def read() -> None:
            try:
                got.extend(d.object_id for r in responses for d in r.deliveries)
            except grpc.RpcError as exc:  # the test cancels the call when done
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        baseline = exchange.rss_bytes()
        memory = PeakMemory(exchange)
        try:
            ids = submit_padded(exchange, source, 2400, 99_000)
            wait_until(lambda: len(got) >= len(ids), 300, "the subscriber to receive it all")
        finally:
            peak = memory.stop()
            call.cancel()  # type: ignore[no-untyped-call]
            reading.join(10)
    assert sorted(got) == sorted(ids)
    # The tail keeps 16 MiB of objects; the rest is bounded per stream and per submission.
    assert peak - baseline < 200 * MB, (baseline // MB, peak // MB)
