"""The Bus contract, run on both buses (LocalBus and KafkaBus on Tansu).

Positions are always taken from what publish() returned, never from the broker:
that is also how the relay and the subscriptions must work (Tansu's end offsets
can be wrong).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTp
from aiokafka.admin import AIOKafkaAdminClient

from exchange.bus import (
    Bus,
    BusReader,
    BusRecord,
    ReadRecord,
    Refused,
    TopicPartition,
    record_bytes,
)
from exchange.bus.kafka import KafkaBus, KafkaReader, client_options
from exchange.bus.local import LocalBus
from exchange.config import KafkaSettings
from exchange.errors import InvalidArgument, NotFound, Unavailable
from tests.integration.conftest import BusFactory, kafka_settings
from tests.kafka_broker import free_port
from tests.kcat import kcat_read

pytestmark = pytest.mark.timeout(120)

Placed = list[tuple[TopicPartition, int]]


def record(
    topic: str, n: int, key: str = "k", headers: Sequence[tuple[str, bytes]] = ()
) -> BusRecord:
    return BusRecord(topic, key.encode(), f"value-{n}".encode(), tuple(headers))


@asynccontextmanager
async def reader_of(
    bus: Bus, start: Mapping[TopicPartition, int | None]
) -> AsyncIterator[BusReader]:
    reader = await bus.open_reader(start)
    try:
        yield reader
    finally:
        await reader.close()


async def read_n(reader: BusReader, n: int, timeout_s: float = 20.0) -> list[ReadRecord]:
    """Read until ``n`` records have arrived; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    out: list[ReadRecord] = []
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"read {len(out)} of {n} records in {timeout_s} s")
        out += await reader.read(500, min(remaining, 1.0))
    return out


async def publish(bus: Bus, records: Sequence[BusRecord]) -> Placed:
    """Publish records every bus takes (small ones); where each landed."""
    placed = await bus.publish(records)
    assert not any(isinstance(p, Refused) for p in placed), placed
    return [p for p in placed if not isinstance(p, Refused)]


async def all_from_start(bus: Bus, topics: Sequence[str]) -> dict[TopicPartition, int | None]:
    return {(t, p): None for t in topics for p in await bus.partitions(t)}


def by_partition(records: Sequence[ReadRecord]) -> dict[TopicPartition, list[ReadRecord]]:
    out: dict[TopicPartition, list[ReadRecord]] = defaultdict(list)
    for r in records:
        out[(r.topic, r.partition)].append(r)
    return out


def assert_each_partition_ordered(records: Sequence[ReadRecord]) -> None:
    for tp, recs in by_partition(records).items():
        offsets = [r.offset for r in recs]
        assert offsets == sorted(set(offsets)), f"{tp}: out of order or repeated"


# -- publish and read back ---------------------------------------------------------------


async def test_publish_returns_where_each_record_landed(bus: Bus) -> None:
    await bus.ensure_topics(["a", "b"])
    batch = [record("a", i, key=f"k{i % 4}") for i in range(20)] + [
        record("b", i) for i in range(5)
    ]

    first = await publish(bus, batch)
    second = await publish(bus, batch)

    assert len(first) == len(second) == len(batch)
    seen: dict[TopicPartition, list[int]] = defaultdict(list)
    for r, ((topic, partition), offset) in zip(batch + batch, first + second, strict=True):
        assert topic == r.topic
        assert partition in await bus.partitions(topic)
        seen[(topic, partition)].append(offset)
    for tp, offsets in seen.items():
        assert offsets == sorted(set(offsets)), f"{tp}: offsets not increasing: {offsets}"
    assert await bus.publish([]) == []


async def test_records_read_back_intact(bus: Bus) -> None:
    await bus.ensure_topics(["intact"])
    batch = [
        BusRecord("intact", b"plain", b"v", (("type", b"indicator"), ("tlp", b"clear"))),
        BusRecord("intact", b"\x00\xff binary key", b"\x00\x01\x02\xff" * 300, ()),
        BusRecord("intact", b"empty-value", b"", (("h", b""),)),
        # Header order and repeated names are kept, as in Kafka.
        BusRecord("intact", b"repeat", b"x", (("a", b"1"), ("b", b"2"), ("a", b"3"))),
        BusRecord("intact", b"unicode", "κλειδί".encode(), (("ünï", b"wert"),)),
    ]
    placed = await publish(bus, batch)

    async with reader_of(bus, await all_from_start(bus, ["intact"])) as reader:
        got = await read_n(reader, len(batch))

    expected = {
        pos: ReadRecord(tp[0], tp[1], pos[1], r.key, r.value, r.headers)
        for r, pos in zip(batch, placed, strict=True)
        for tp in [pos[0]]
    }
    assert {((r.topic, r.partition), r.offset): r for r in got} == expected
    assert len(got) == len(batch)
    assert_each_partition_ordered(got)


async def test_reader_starts_at_given_offset(bus: Bus) -> None:
    await bus.ensure_topics(["from"])
    placed = await publish(bus, [record("from", i, key="same") for i in range(10)])
    tp = placed[0][0]
    assert all(p[0] == tp for p in placed), "one key, one partition"
    offsets = [off for _, off in placed]

    async with reader_of(bus, {tp: offsets[4]}) as reader:
        got = await read_n(reader, 6)
        assert await reader.read(100, 0.2) == []

    assert [r.offset for r in got] == offsets[4:]
    assert [r.value for r in got] == [f"value-{i}".encode() for i in range(4, 10)]


async def test_reader_from_earliest_over_several_topics(bus: Bus) -> None:
    await bus.ensure_topics(["one", "two", "three"])
    await bus.publish([record("one", i, key=f"k{i}") for i in range(7)])
    await bus.publish([record("two", i, key=f"k{i}") for i in range(5)])

    start = await all_from_start(bus, ["one", "two", "three"])
    async with reader_of(bus, start) as reader:
        got = await read_n(reader, 12)
        assert await reader.read(100, 0.2) == []
        await bus.publish([record("three", 0)])
        late = await read_n(reader, 1)

    assert sorted((r.topic, r.value) for r in got) == sorted(
        [("one", f"value-{i}".encode()) for i in range(7)]
        + [("two", f"value-{i}".encode()) for i in range(5)]
    )
    assert [(r.topic, r.value) for r in late] == [("three", b"value-0")]
    assert_each_partition_ordered(got)


async def test_reader_opened_after_last_publish_sees_only_newer_records(bus: Bus) -> None:
    await bus.ensure_topics(["news"])
    placed = await publish(bus, [record("news", i, key=f"k{i}") for i in range(10)])
    # Where the relay would say "now" is: one past the last offset it got back.
    start: dict[TopicPartition, int | None] = {tp: 0 for tp in await all_from_start(bus, ["news"])}
    for tp, offset in placed:
        start[tp] = max(start[tp] or 0, offset + 1)

    async with reader_of(bus, start) as reader:
        assert await reader.read(100, 0.3) == []
        await bus.publish([record("news", 100 + i, key=f"k{i}") for i in range(5)])
        got = await read_n(reader, 5)
        assert await reader.read(100, 0.2) == []

    assert sorted(r.value for r in got) == sorted(f"value-{100 + i}".encode() for i in range(5))


async def test_reader_past_the_end_waits_for_the_log_to_reach_it(bus: Bus) -> None:
    await bus.ensure_topics(["ahead"])
    placed = await publish(bus, [record("ahead", i, key="same") for i in range(3)])
    tp, last = placed[-1]

    async with reader_of(bus, {tp: last + 3}) as reader:
        assert await reader.read(100, 0.3) == []
        more = await publish(bus, [record("ahead", 3 + i, key="same") for i in range(4)])
        got = await read_n(reader, 2)
        assert await reader.read(100, 0.2) == []

    assert [r.offset for r in got] == [off for _, off in more][2:]


async def test_records_with_one_key_keep_their_order(bus: Bus) -> None:
    await bus.ensure_topics(["keys"])
    keys, versions = 30, 40
    batch = [record("keys", v, key=f"key-{k}") for v in range(versions) for k in range(keys)]
    # Uneven batches, so that a key's versions straddle publish calls.
    for i in range(0, len(batch), 97):
        await bus.publish(batch[i : i + 97])

    async with reader_of(bus, await all_from_start(bus, ["keys"])) as reader:
        got = await read_n(reader, len(batch))

    per_key: dict[bytes, list[bytes]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for r in got:
        per_key[r.key].append(r.value)
        partition_of[r.key].add(r.partition)
    expected = [f"value-{v}".encode() for v in range(versions)]
    assert len(per_key) == keys
    assert all(values == expected for values in per_key.values())
    assert all(len(parts) == 1 for parts in partition_of.values())


# -- exactly once, in order, while publishing --------------------------------------------


async def test_concurrent_reader_sees_every_record_once_in_order(bus: Bus) -> None:
    await bus.ensure_topics(["stream"])
    total, batch_size = 5_000, 250
    start = await all_from_start(bus, ["stream"])
    got: list[ReadRecord] = []

    async def consume(reader: BusReader) -> None:
        deadline = time.monotonic() + 60
        while len(got) < total and time.monotonic() < deadline:
            got.extend(await reader.read(333, 0.5))

    placed: Placed = []
    async with reader_of(bus, start) as reader:
        consumer = asyncio.create_task(consume(reader))
        for i in range(0, total, batch_size):
            batch = [record("stream", n, key=f"k{n % 17}") for n in range(i, i + batch_size)]
            placed += await publish(bus, batch)
        await asyncio.wait_for(consumer, 70)
        # Nothing beyond the 5,000: no record is returned twice.
        assert await reader.read(1000, 0.3) == []

    assert len(got) == total
    published: dict[TopicPartition, list[tuple[int, bytes]]] = defaultdict(list)
    for n, (tp, offset) in enumerate(placed):
        published[tp].append((offset, f"value-{n}".encode()))
    read = {tp: [(r.offset, r.value) for r in recs] for tp, recs in by_partition(got).items()}
    assert read == published


# -- bounded in bytes ------------------------------------------------------------------------


async def test_reads_are_bounded_in_bytes_and_a_larger_record_comes_alone(bus: Bus) -> None:
    """What a reader returns (and fetches ahead) is bounded in bytes, so that the reader
    of a subscriber that stopped reading holds little; nothing is skipped or repeated."""
    await bus.ensure_topics(["heavy"])
    sizes = [30_000] * 10 + [250_000] + [30_000] * 5
    batch = [BusRecord("heavy", b"one-key", bytes([65 + i]) * n) for i, n in enumerate(sizes)]
    tp = {p[0] for p in await publish(bus, batch)}.pop()
    limit = 100_000
    got: list[ReadRecord] = []
    reader = await bus.open_reader({tp: None}, prefetch_bytes=limit)
    try:
        deadline = time.monotonic() + 30
        while len(got) < len(batch):
            assert time.monotonic() < deadline, f"read {len(got)} of {len(batch)}"
            records = await reader.read(1000, 1.0, max_bytes=limit)
            weight = sum(record_bytes(r) for r in records)
            assert len(records) <= 1 or weight <= limit, (len(records), weight)
            got += records
        assert await reader.read(1000, 0.2, max_bytes=limit) == []
    finally:
        await reader.close()
    assert [r.value for r in got] == [r.value for r in batch]
    assert [len(r.value) for r in got if len(r.value) > limit] == [250_000]


# -- waiting ---------------------------------------------------------------------------------


async def test_read_with_nothing_available_waits_about_the_timeout(bus: Bus) -> None:
    await bus.ensure_topics(["quiet"])
    async with reader_of(bus, await all_from_start(bus, ["quiet"])) as reader:
        began = time.monotonic()
        assert await reader.read(10, 0.5) == []
        waited = time.monotonic() - began
        began = time.monotonic()
        assert await reader.read(10, 0) == []
        immediate = time.monotonic() - began

    assert 0.45 <= waited < 2.0
    assert immediate < 0.5


async def test_waiting_reader_gets_a_new_record_promptly(bus: Bus) -> None:
    await bus.ensure_topics(["live"])
    async with reader_of(bus, await all_from_start(bus, ["live"])) as reader:
        waiting = asyncio.create_task(reader.read(10, 10.0))
        await bus.publish([record("live", 1)])
        published = time.monotonic()
        got = await asyncio.wait_for(waiting, 15)
        latency = time.monotonic() - published

    assert [r.value for r in got] == [b"value-1"]
    assert latency < 1.0


# -- topics and errors ------------------------------------------------------------------------


async def test_ensure_topics_is_idempotent(bus: Bus) -> None:
    await bus.ensure_topics(["idem"])
    partitions = await bus.partitions("idem")
    placed = await publish(bus, [record("idem", 1)])

    await bus.ensure_topics(["idem", "idem", "other"])
    await bus.ensure_topics(["idem"])
    await bus.ensure_topics([])

    assert await bus.partitions("idem") == partitions
    assert await bus.partitions("other") == partitions
    async with reader_of(bus, {placed[0][0]: placed[0][1]}) as reader:
        assert [r.value for r in await read_n(reader, 1)] == [b"value-1"]


async def test_partitions(bus: Bus) -> None:
    await bus.ensure_topics(["parts"])
    expected = KafkaSettings().partitions if isinstance(bus, KafkaBus) else 1
    assert await bus.partitions("parts") == list(range(expected))


async def test_unknown_topics_and_partitions_are_not_found(bus: Bus) -> None:
    await bus.ensure_topics(["known"])
    with pytest.raises(NotFound, match="missing"):
        await bus.partitions("missing")
    with pytest.raises(NotFound, match="missing"):
        await bus.publish([record("known", 1), record("missing", 2)])
    with pytest.raises(NotFound):
        await bus.open_reader({("missing", 0): None})
    with pytest.raises(NotFound):
        await bus.open_reader({("known", 99): None})
    with pytest.raises(InvalidArgument):
        await bus.open_reader({})
    # Asking about a topic must not create it (Tansu creates topics on a metadata request).
    with pytest.raises(NotFound):
        await bus.partitions("missing")
    # The refused batch left nothing behind, not even its valid half.
    async with reader_of(bus, await all_from_start(bus, ["known"])) as reader:
        assert await reader.read(10, 0.3) == []


async def test_bad_topic_names_are_refused(bus: Bus) -> None:
    for name in ["community:ngo", "", "a b", "x" * 300, ".."]:
        with pytest.raises(InvalidArgument):
            await bus.ensure_topics([name])


async def test_closed_reader_refuses_reads(bus: Bus) -> None:
    await bus.ensure_topics(["closing"])
    reader = await bus.open_reader(await all_from_start(bus, ["closing"]))
    await reader.close()
    await reader.close()
    with pytest.raises(Unavailable):
        await reader.read(1, 0.1)


async def test_bus_close_closes_its_readers(make_bus: BusFactory) -> None:
    bus = make_bus()
    await bus.start()
    await bus.ensure_topics(["t"])
    reader = await bus.open_reader(await all_from_start(bus, ["t"]))
    await bus.close()
    with pytest.raises(Unavailable):
        await reader.read(1, 0.1)


async def test_second_instance_sees_records_and_continues_offsets(make_bus: BusFactory) -> None:
    """Another process on the same storage (a CLI, a replica, a restart)."""
    writer, other = make_bus(), make_bus()
    await writer.start()
    await other.start()
    try:
        await writer.ensure_topics(["shared"])
        first = await publish(writer, [record("shared", 1, key="k")])
        tp, offset = first[0]
        async with reader_of(other, {tp: offset}) as reader:
            # Not woken by the other instance's publish: found by re-checking.
            assert [r.value for r in await read_n(reader, 1, timeout_s=5)] == [b"value-1"]
        second = await publish(other, [record("shared", 2, key="k")])
        assert second == [(tp, offset + 1)]
    finally:
        await writer.close()
        await other.close()


# -- LocalBus only ----------------------------------------------------------------------------


async def test_local_publish_wakes_readers_without_waiting_for_the_poll(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus.sqlite3", poll_interval_s=30)
    await bus.start()
    try:
        await bus.ensure_topics(["wake"])
        async with reader_of(bus, {("wake", 0): None}) as reader:
            waiting = asyncio.create_task(reader.read(10, 20))
            await bus.publish([record("wake", 1)])
            published = time.monotonic()
            got = await asyncio.wait_for(waiting, 25)
            assert time.monotonic() - published < 1.0
        assert [r.offset for r in got] == [0]
    finally:
        await bus.close()


async def test_local_reads_ahead_without_skipping_or_repeating(tmp_path: Path) -> None:
    """A local reader starts its next read as a full one returns: records published
    meanwhile, reads with other bounds and a close in between lose or repeat nothing."""
    bus = LocalBus(tmp_path / "bus.sqlite3")
    await bus.start()
    try:
        await bus.ensure_topics(["a", "b"])
        await publish(bus, [record(t, i) for i in range(20) for t in ("a", "b")])
        reader = await bus.open_reader(await all_from_start(bus, ["a", "b"]))
        got = await reader.read(5, 1.0)
        assert len(got) == 5 and reader._ahead is not None
        await publish(bus, [record("a", 20 + i) for i in range(5)])
        got += await reader.read(3, 1.0)  # other bounds: the read ahead is dropped
        got += await reader.read(3, 1.0)
        got += await read_n(reader, 45 - len(got))
        assert await reader.read(10, 0.1) == []
        assert_each_partition_ordered(got)
        assert sorted((r.topic, r.offset) for r in got) == sorted(
            [("b", i) for i in range(20)] + [("a", i) for i in range(25)]
        )
        await reader.close()
        again = await bus.open_reader({("a", 0): 23})
        first = await again.read(2, 1.0)  # a read ahead is started, then closed under it
        await again.close()
        assert [r.offset for r in first] == [23, 24]
    finally:
        await bus.close()


async def test_local_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite3"
    bus = LocalBus(path)
    await bus.start()
    await bus.ensure_topics(["durable"])
    await bus.publish([record("durable", i) for i in range(3)])
    await bus.close()

    bus = LocalBus(path)
    await bus.start()
    try:
        assert await bus.publish([record("durable", 3)]) == [(("durable", 0), 3)]
        async with reader_of(bus, {("durable", 0): None}) as reader:
            got = await read_n(reader, 4)
        assert [(r.offset, r.value) for r in got] == [(i, f"value-{i}".encode()) for i in range(4)]
    finally:
        await bus.close()


# -- KafkaBus only ----------------------------------------------------------------------------


@pytest.mark.kafka
async def test_kcat_sees_what_kafkabus_published(tansu: str) -> None:
    prefix = f"kcat{uuid.uuid4().hex[:8]}"
    bus = KafkaBus(kafka_settings(tansu), prefix, client_id="exchange-tests")
    await bus.start()
    try:
        await bus.ensure_topics(["wire"])
        batch = [
            record(
                "wire", i, key=f"indicator--{i}", headers=[("type", b"indicator"), ("n", b"%d" % i)]
            )
            for i in range(10)
        ]
        placed = await publish(bus, batch)
        topic = bus.kafka_topic("wire")
    finally:
        await bus.close()

    seen = await asyncio.to_thread(kcat_read, tansu, topic, expect=len(batch))

    expected = sorted(
        (tp[1], offset, r.key.decode(), r.value.decode(), [(k, v.decode()) for k, v in r.headers])
        for r, (tp, offset) in zip(batch, placed, strict=True)
    )
    got = sorted((m["partition"], m["offset"], m["key"], m["value"], m["headers"]) for m in seen)
    assert got == expected
    assert all(m["topic"] == f"{prefix}.wire" for m in seen)


@pytest.mark.kafka
async def test_kafka_reader_drops_records_replayed_below_its_position(tansu: str) -> None:
    """Tansu can hand a consumer records it already returned (e.g. after a reset to its
    wrong end offset). Simulated by moving the consumer back: nothing comes twice."""
    bus = KafkaBus(kafka_settings(tansu), f"replay{uuid.uuid4().hex[:8]}")
    await bus.start()
    try:
        await bus.ensure_topics(["r"])
        placed = await publish(bus, [record("r", i, key="same") for i in range(10)])
        tp = placed[0][0]
        reader = await bus.open_reader({tp: None})
        assert isinstance(reader, KafkaReader)
        assert len(await read_n(reader, 10)) == 10
        reader._consumer.seek(KafkaTp(bus.kafka_topic("r"), tp[1]), 0)  # the replay
        assert await reader.read(100, 0.5) == []
        await bus.publish([record("r", 10, key="same")])
        assert [r.value for r in await read_n(reader, 1)] == [b"value-10"]
    finally:
        await bus.close()


async def test_kafka_bus_close_leaves_no_consumer_running(tansu: str) -> None:
    """Readers opened, some cancelled part-way (a stream that went away) and one
    never closed by its caller: after close() no aiokafka task is left on the loop
    (a task left there is destroyed with the loop, mid-fetch), and no reader opens."""
    bus = KafkaBus(kafka_settings(tansu), f"closing{uuid.uuid4().hex[:8]}")
    before = asyncio.all_tasks()
    await bus.start()
    await bus.ensure_topics(["c"])
    start = await all_from_start(bus, ["c"])
    kept = await bus.open_reader(start)
    opening = [asyncio.create_task(bus.open_reader(start)) for _ in range(6)]
    for n, task in enumerate(opening):
        # Cancelled at different points of opening: before, during and after start().
        for _ in range(n * 3):
            await asyncio.sleep(0)
        task.cancel()
    await asyncio.gather(*opening, return_exceptions=True)
    await bus.close()
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
    assert not left, left
    with pytest.raises(Unavailable):
        await kept.read(1, 0.1)
    with pytest.raises(Unavailable):
        await bus.open_reader(start)


async def test_kafka_security_settings_reach_all_clients() -> None:
    """Tansu cannot do TLS or SASL; check the options are built and accepted by aiokafka."""
    cafile = "/etc/ssl/certs/ca-certificates.crt"  # any PEM bundle will do
    settings = KafkaSettings(
        bootstrap="kafka-1:9093, kafka-2:9093",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="exchange",
        sasl_password="secret",
        ssl_cafile=cafile,
    )
    options = client_options(settings, "exchange")
    assert options["bootstrap_servers"] == ["kafka-1:9093", "kafka-2:9093"]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "exchange",
        "secret",
    )
    assert options["ssl_context"] is not None
    producer = AIOKafkaProducer(**options)
    consumer = AIOKafkaConsumer(**options)
    admin = AIOKafkaAdminClient(**options)
    # Built, never started; closed so that none is left for the collector to warn of.
    await producer.stop()
    await consumer.stop()
    await admin.close()
    with pytest.raises(InvalidArgument, match="security_protocol"):
        client_options(KafkaSettings(bootstrap="k:9092", security_protocol="TLS"), "x")
    with pytest.raises(InvalidArgument, match="ssl_cafile"):
        client_options(
            KafkaSettings(bootstrap="k:9092", security_protocol="SSL", ssl_cafile="/nope"), "x"
        )


@pytest.mark.kafka
async def test_unreachable_kafka_is_unavailable() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    bus = KafkaBus(KafkaSettings(bootstrap=bootstrap, enable_idempotence=False), "x")
    with pytest.raises(Unavailable, match=bootstrap):
        await bus.start()
