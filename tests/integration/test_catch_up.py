"""Catching up from history (exchange._feed, exchange._tail.Decoded, the local bus's
reads, exchange.envelope): streams reading the same history at once share its decoding,
and every stream still gets each record once, whatever its reads' sizes; a subscriber
resuming from a cursor taken mid-way through a catch-up repeats and skips nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from exchange_client import ExchangeClient

from exchange._feed import Feed
from exchange._tail import Decoded, Entry, LiveTail, decode
from exchange.bus import BusRecord, ReadRecord, TopicPartition, record_bytes
from exchange.bus.kafka import KafkaBus
from exchange.bus.local import LocalBus
from exchange.envelope import _as_written, from_record, to_records
from exchange.model import Audience, StoredObject, Tlp, ValidObject
from tests.helpers import ServerThread, bundle, indicator, settings_for
from tests.integration.conftest import kafka_settings

TP: TopicPartition = ("t", 0)


class _Store:
    """Just what the tail asks a store: the relay-recorded positions."""

    def __init__(self, positions: Mapping[TopicPartition, int]) -> None:
        self.positions = dict(positions)

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        return {tp: off for tp, off in self.positions.items() if tp[0] in set(topics)}


def _stored(n: int, *, size: int = 0, labels: tuple[str, ...] = ("lead",)) -> StoredObject:
    # The labels in the body too: a record whose labels are too long for a header is
    # read from there.
    body = b'{"id":"indicator--%d","labels":%s,"pad":"%s"}' % (
        n,
        orjson.dumps(labels),
        b"x" * size,
    )
    return StoredObject(
        seq=n + 1,
        submitter="harbor-light",
        accepted_at=1_767_225_600.25 + n,
        obj=ValidObject(
            object_id=f"indicator--{n}",
            object_type="indicator",
            version="2026-01-01T00:00:00.000Z",
            created_by_ref="identity--x",
            tlp=Tlp.GREEN,
            body=body,
            labels=labels,
        ),
        audience=Audience(Tlp.GREEN, "harbor-light", communities=frozenset({"north"})),
        topics=(TP[0],),
    )


async def _bus_with(tmp_path: Path, objects: list[StoredObject]) -> LocalBus:
    bus = LocalBus(tmp_path / "bus.sqlite3")
    await bus.start()
    await bus.ensure_topics([TP[0]])
    await bus.publish([r for s in objects for r in to_records(s, [TP[0]])])
    return bus


async def _read_all(feed: Feed, per_read: int, count: int) -> list[Entry]:
    got: list[Entry] = []
    deadline = asyncio.get_running_loop().time() + 20
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, len(got)
        got += await feed.read(per_read, 0.2)
    return got


async def test_streams_catching_up_together_decode_each_record_once(tmp_path: Path) -> None:
    objects = [_stored(n) for n in range(300)]
    bus = await _bus_with(tmp_path, objects)
    # The tail starts after the history: both feeds read it privately.
    tail = LiveTail(_Store({TP: 300}), bus)  # type: ignore[arg-type]
    feeds: list[Feed] = []
    try:
        await tail.ensure([TP])
        feeds = [Feed(tail, bus, {TP: -1}), Feed(tail, bus, {TP: -1})]
        # Alone, a stream shares nothing (there is no one to share with).
        first = await feeds[0].read(1, 0.2)
        second = await feeds[1].read(1, 0.2)
        assert tail.decoded.hits == 0 and tail.decoded.readers == 2
        first += await _read_all(feeds[0], 500, 299)
        second += await _read_all(feeds[1], 37, 299)
        # Then the second stream decoded nothing: it was handed the first one's entries.
        assert tail.decoded.hits == 299
        assert [e[1] for e in second] == list(range(300))
        assert all(a[2] is b[2] for a, b in zip(first[1:], second[1:], strict=True))
        assert [e[2] for e in first] == [e[2] for e in second] == objects
        # Once no stream reads history, nothing is held.
        await feeds[0].close()
        assert tail.decoded.readers == 1
        await feeds[1].close()
        assert tail.decoded.readers == 0 and tail.decoded.held_bytes == 0
    finally:
        for feed in feeds:
            await feed.close()
        await tail.close()
        await bus.close()


@pytest.mark.parametrize(
    ("decoded_bytes", "max_bytes"), [(0, None), (20_000, 9_000), (10**9, 4_000)]
)
async def test_catch_up_across_reads_and_evictions_neither_repeats_nor_skips(
    tmp_path: Path, decoded_bytes: int, max_bytes: int | None
) -> None:
    """Records of varied sizes (one over a read's byte bound), three streams reading
    with different read sizes and byte bounds, interleaved, while the shared decoded
    records are evicted under them: each stream gets every record once, in order, equal
    to what was published, and each read stays within its bound."""
    sizes = [(n * 7919) % 1_500 for n in range(400)]
    sizes[123] = 12_000  # larger than any read's byte bound: it comes alone
    objects = [_stored(n, size=s) for n, s in enumerate(sizes)]
    bus = await _bus_with(tmp_path, objects)
    tail = LiveTail(_Store({TP: 400}), bus, decoded_bytes=decoded_bytes)  # type: ignore[arg-type]
    feeds: list[Feed] = []
    try:
        await tail.ensure([TP])
        per_read = [500, 7, 61]
        feeds = [Feed(tail, bus, {TP: -1}, max_bytes) for _ in per_read]
        got: list[list[Entry]] = [[] for _ in feeds]
        deadline = asyncio.get_running_loop().time() + 30
        while any(len(g) < 400 for g in got):
            assert asyncio.get_running_loop().time() < deadline, [len(g) for g in got]
            for feed, n, g in zip(feeds, per_read, got, strict=True):
                if len(g) < 400:
                    entries = await feed.read(n, 0.2)
                    assert len(entries) <= n
                    if max_bytes is not None and len(entries) > 1:
                        assert (
                            sum(
                                len(e[2].obj.body)
                                for e in entries
                                if isinstance(e[2], StoredObject)
                            )
                            <= max_bytes
                        )
                    g.extend(entries)
        for g in got:
            assert [e[1] for e in g] == list(range(400))
            assert [e[2] for e in g] == objects
    finally:
        for feed in feeds:
            await feed.close()
        await tail.close()
        await bus.close()


def test_decoded_holds_at_most_its_bytes_and_checks_the_record() -> None:
    records = [
        ReadRecord(TP[0], TP[1], n, r.key, r.value, r.headers)
        for n in range(10)
        for r in to_records(_stored(n, size=900), [TP[0]])
    ]
    weight = len(records[0].key) + len(records[0].value)
    decoded = Decoded(max_bytes=3 * weight)
    decoded.opened()
    decoded.opened()  # two streams read history: their records are shared
    assert [e[2] for e in decoded.decode(records)] == [decode(r)[2] for r in records]
    assert decoded.held_bytes == 3 * weight
    # Only the newest three are kept.
    assert [e[1] for e in decoded.decode(records[-3:])] == [7, 8, 9]
    assert decoded.hits == 3
    decoded.decode(records[:1])
    assert decoded.hits == 3
    # Another record at a place it knows (a topic made again from scratch) is decoded.
    other = to_records(_stored(42), [TP[0]])[0]
    again = ReadRecord(TP[0], TP[1], 9, other.key, other.value, other.headers)
    (entry,) = decoded.decode([again])
    assert decoded.hits == 3
    assert isinstance(entry[2], StoredObject) and entry[2].obj.object_id == "indicator--42"
    # A record the exchange did not write is skipped as before (None), and kept so.
    foreign = ReadRecord(TP[0], TP[1], 11, b"k", b"{}", ())
    assert decoded.decode([foreign, foreign]) == [(TP, 11, None), (TP, 11, None)]


def test_envelope_round_trip() -> None:
    """What a record decodes to is what was published, the repeated header values
    (audience, topics, labels) decoded once and shared."""
    long_labels = tuple(f"trafficking:lead-{i:04d}-" + "x" * 40 for i in range(40))
    for stored in (_stored(1), _stored(2, labels=()), _stored(3, labels=long_labels)):
        (record,) = to_records(stored, [TP[0]])
        read = ReadRecord(TP[0], TP[1], 0, record.key, record.value, record.headers)
        assert from_record(read) == stored
        assert from_record(read).audience is from_record(read).audience
        # Headers in another order are read the same (through the general path).
        shuffled = ReadRecord(TP[0], TP[1], 0, record.key, record.value, record.headers[::-1])
        assert from_record(shuffled) == stored
    # What to_records writes takes the path by place (it does not fall to the dict).
    (record,) = to_records(_stored(5), [TP[0]])
    assert _as_written(ReadRecord(TP[0], TP[1], 0, record.key, record.value, record.headers))
    # A record from before audiences and routing headers: the TLP alone, one topic.
    (record,) = to_records(_stored(4), [TP[0]])
    old = tuple((k, v) for k, v in record.headers if k not in {"audience", "topics"})
    stored = from_record(ReadRecord("green", 0, 5, record.key, record.value, old))
    assert stored.audience == Audience(Tlp.GREEN, "harbor-light")
    assert stored.topics == ("green",)
    # Not written by the exchange.
    bad_tlp = tuple((k, b"purple" if k == "tlp" else v) for k, v in record.headers)
    for headers in ((), bad_tlp):
        with pytest.raises((KeyError, ValueError)):
            from_record(ReadRecord(TP[0], 0, 0, record.key, record.value, headers))


async def test_local_reads_stay_within_their_byte_bound(tmp_path: Path) -> None:
    """The local bus weighs headers as stored (a little over record_bytes): reads stay
    within the bound record_bytes measures, and skip and repeat nothing."""
    bus = LocalBus(tmp_path / "bus.sqlite3")
    await bus.start()
    try:
        await bus.ensure_topics(["t"])
        records = [
            BusRecord("t", b"k%d" % n, b"v" * (n * 37 % 3_000), (("h", b"x" * (n % 50)),))
            for n in range(300)
        ]
        await bus.publish(records)
        reader = await bus.open_reader({TP: None})
        got: list[ReadRecord] = []
        while len(got) < 300:
            batch = await reader.read(100, 1.0, max_bytes=10_000)
            assert len(batch) == 1 or sum(record_bytes(r) for r in batch) <= 10_000
            got += batch
        assert [(r.key, r.value, r.headers) for r in got] == [
            (r.key, r.value, r.headers) for r in records
        ]
        await reader.close()
    finally:
        await bus.close()


async def _bodies(server: ServerThread) -> dict[str, bytes]:
    """Every object on the green topic, as the bus holds it: id -> body."""
    assert server.server is not None
    bus = server.server.bus
    reader = await bus.open_reader({("green", p): None for p in await bus.partitions("green")})
    bodies: dict[str, bytes] = {}
    try:
        while records := await reader.read(1_000, 0.5):
            bodies.update((r.key.decode(), r.value) for r in records)
    finally:
        await reader.close()
    return bodies


def test_resuming_mid_catch_up_from_a_cursor_repeats_and_skips_nothing(tmp_path: Path) -> None:
    """A subscriber reading from the beginning stops mid-way (mid-message, too), and
    resumes from the cursor of the last delivery it handled: the rest, each once."""
    server = ServerThread(
        settings_for(tmp_path / "data", subscriptions={"max_batch": 50, "tail_window": 100})
    ).start()
    try:
        ngo = server.add_partner("harbor-light")
        platform = server.add_partner("kestrel", sector="technology")
        objects = [indicator(ngo.identity, n=n, tlp=Tlp.GREEN) for n in range(600)]
        with ExchangeClient(server.target, token=ngo.token) as client:
            for start in range(0, 600, 100):
                assert client.submit(bundle(objects[start : start + 100])).ok
        server.wait_published()
        expected = [o["id"] for o in objects]
        stored = server.run(_bodies(server))
        got: list[str] = []
        cursor: str | None = None
        with ExchangeClient(server.target, token=platform.token) as client:
            # Stops mid-message (75), at the end of one (100: max_batch is 50), and so on.
            for take in (75, 25, 230, 1):
                left = take
                subscription = (
                    client.subscribe(cursor=cursor)
                    if cursor
                    else client.subscribe(from_beginning=True)
                )
                with subscription:
                    for delivery in subscription:
                        got.append(delivery.object_id)
                        # The bytes as stored, and decoded on access to the object sent.
                        assert delivery.object_json == stored[delivery.object_id]
                        assert delivery.object == objects[len(got) - 1]
                        left -= 1
                        if left == 0:
                            cursor = delivery.cursor
                            break
            with client.subscribe(cursor=cursor) as subscription:
                for delivery in subscription:
                    got.append(delivery.object_id)
                    if len(got) == 600:
                        break
        assert got == expected
    finally:
        server.stop()


@pytest.mark.kafka
async def test_a_kafka_header_without_a_value_reads_as_empty(tansu: str) -> None:
    """Headers pass through as aiokafka hands them, except a null value (which no
    exchange record has, but another producer's may): read as b""."""
    bus = KafkaBus(kafka_settings(tansu), f"t{uuid.uuid4().hex[:12]}", client_id="exchange-tests")
    await bus.start()
    producer = AIOKafkaProducer(bootstrap_servers=tansu, enable_idempotence=False)
    await producer.start()
    try:
        await bus.ensure_topics(["t"])
        for headers in ([("a", b"1"), ("b", None)], [("a", b"1"), ("b", b"2")]):
            await producer.send_and_wait(
                bus.kafka_topic("t"), b"v", b"k", partition=0, headers=headers
            )
        reader = await bus.open_reader({TP: None})
        got: list[ReadRecord] = []
        while len(got) < 2:
            got += await reader.read(10, 5.0)
        await reader.close()
        assert [r.headers for r in got] == [(("a", b"1"), ("b", b"")), (("a", b"1"), ("b", b"2"))]
    finally:
        await producer.stop()
        await bus.close()
