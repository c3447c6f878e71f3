"""Erasure notices on both buses, through real gRPC: every stream that received an
erased object gets exactly one notice (its versions, its reason, no body); a partner
never entitled gets nothing; a replay from the beginning holds no copy (on Kafka the
erased record is still on the topic before compaction: it is held back); the embedded
bus's files and the Kafka topics (read with kcat, compacted as Kafka's log cleaner
would) hold none; a newer version its creator publishes afterwards flows as usual."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_client import ExchangeClient
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc

from exchange import policy
from exchange._subscription_request import Cursor
from exchange.audit.entries import Action, AuditQuery
from exchange.bus import TopicPartition
from exchange.bus.kafka import KafkaBus
from exchange.envelope import to_erasure_records
from exchange.model import Tlp
from tests.helpers import (
    TLP_IDS,
    PartnerCredentials,
    ServerThread,
    indicator,
    settings_for,
    stamp,
    wait_until,
)
from tests.helpers import bundle as make_bundle

SECRET = "+15550187-VICTIM-NUMBER-Zq"
LEAD = "indicator--6a0c4b8e-2f1d-4c3b-8e7a-9d1c0b2a3f44"


@pytest.fixture(
    params=[
        "local",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("kafka-postgres", marks=[pytest.mark.kafka, pytest.mark.postgres]),
    ]
)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerThread]:
    bootstrap = request.getfixturevalue("tansu") if request.param != "local" else None
    extra: dict[str, Any] = {}
    if request.param == "kafka-postgres":
        extra["database"] = request.getfixturevalue("postgres_url")
    srv = ServerThread(settings_for(tmp_path / "data", bootstrap, **extra)).start()
    yield srv
    srv.stop()


class Stream:
    """A raw Subscribe stream read in a thread: every delivery, and the position of
    the last message's cursor."""

    def __init__(
        self, server: ServerThread, who: PartnerCredentials, *, from_beginning: bool = False
    ) -> None:
        self.deliveries: list[exchange_pb2.Delivery] = []
        self.at: Mapping[TopicPartition, tuple[int, int]] | None = None
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(server.target)
        request = (
            exchange_pb2.SubscribeRequest(from_beginning=True)
            if from_beginning
            else exchange_pb2.SubscribeRequest()
        )
        self._call = exchange_pb2_grpc.ExchangeServiceStub(self._channel).Subscribe(
            request, metadata=(("authorization", f"Bearer {who.token}"),), timeout=120
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_until(lambda: self.at is not None, 30, "the stream to start")

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    self.deliveries += response.deliveries
                    self.at = Cursor.decode(response.cursor).positions
        except grpc.RpcError:
            pass

    def passed(self, positions: dict[TopicPartition, int]) -> bool:
        at = self.at or {}
        return all(at.get(tp, (-1, -1))[0] >= off for tp, off in positions.items())

    def objects(self) -> list[exchange_pb2.Delivery]:
        with self._lock:
            return [d for d in self.deliveries if not d.HasField("erased")]

    def notices(self) -> list[exchange_pb2.Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.HasField("erased")]

    def close(self) -> None:
        self._call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(10)
        self._channel.close()


def relayed_positions(server: ServerThread, who: PartnerCredentials) -> dict[TopicPartition, int]:
    """Where the relay stands on ``who``'s topics once it published everything pending
    (objects and erasures)."""
    assert server.server is not None
    store = server.server.store
    wait_until(
        lambda: (
            not server.run(store.pending_outbox(1)) and not server.run(store.pending_erasures(1))
        ),
        30,
        "the relay to publish",
    )
    return server.run(store.relay_positions(policy.subscription_topics(server.partner(who))))


def caught_up(server: ServerThread, who: PartnerCredentials, stream: Stream) -> None:
    now = relayed_positions(server, who)
    wait_until(lambda: stream.passed(now), 30, f"{who.partner_id}'s stream to catch up")


def test_every_recipient_gets_one_notice_and_no_copy_is_left(
    server: ServerThread, tmp_path: Path
) -> None:
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    ministry = server.add_partner("labour-ministry", sector="government")
    outsider = server.add_partner("outsider", sector="technology")
    server.add_community("shelter-net", ngo, platform, ministry)
    streams = {p.partner_id: Stream(server, p) for p in (platform, ministry, outsider)}
    try:
        first = indicator(ngo.identity, tlp=Tlp.AMBER, object_id=LEAD, description=f"call {SECRET}")
        with ExchangeClient(server.target, token=ngo.token) as c:
            assert c.submit(make_bundle([first]), communities=["shelter-net"]).ok
            wait_until(
                lambda: all(
                    len(streams[p.partner_id].objects()) == 1 for p in (platform, ministry)
                ),
                30,
                "the lead",
            )
            done = c.erase(LEAD, reason="victim-data")
            assert done.versions == [first["modified"]]
        for p in (platform, ministry, outsider):
            caught_up(server, p, streams[p.partner_id])
        for p in (platform, ministry):
            stream = streams[p.partner_id]
            [notice] = stream.notices()
            assert (notice.object_id, notice.object_type) == (LEAD, "indicator")
            assert (notice.submitter, notice.submitter_identity) == (ngo.partner_id, ngo.identity)
            assert list(notice.erased.versions) == [first["modified"]]
            assert notice.erased.reason == "victim-data"
            assert notice.erased.erased_at.seconds > 0
            assert notice.object == b"" and SECRET.encode() not in notice.SerializeToString()
            assert [d.object_id for d in stream.objects()] == [LEAD]
        # Never entitled: nothing, not even that something was erased.
        assert streams[outsider.partner_id].deliveries == []

        # A replay from the beginning holds no copy (on Kafka the record is still on the
        # topic, before compaction: held back), and tells of the erasure.
        replay = Stream(server, platform, from_beginning=True)
        try:
            caught_up(server, platform, replay)
            assert replay.objects() == []
            assert [d.object_id for d in replay.notices()] == [LEAD]
            assert all(SECRET.encode() not in d.SerializeToString() for d in replay.deliveries)
        finally:
            replay.close()
        outsider_replay = Stream(server, outsider, from_beginning=True)
        try:
            caught_up(server, outsider, outsider_replay)
            assert outsider_replay.deliveries == []
        finally:
            outsider_replay.close()

        # The creator publishes a new version after the erasure: delivered as usual.
        newer = indicator(
            ngo.identity, tlp=Tlp.AMBER, object_id=LEAD, modified=stamp(600), name="corrected"
        )
        with ExchangeClient(server.target, token=ngo.token) as c:
            assert c.submit(make_bundle([newer]), communities=["shelter-net"]).ok
        caught_up(server, platform, streams[platform.partner_id])
        got = streams[platform.partner_id].objects()
        assert [(d.object_id, d.version) for d in got] == [
            (LEAD, first["modified"]),
            (LEAD, newer["modified"]),
        ]
        assert len(streams[platform.partner_id].notices()) == 1
    finally:
        for stream in streams.values():
            stream.close()

    # The audit log: one erase.notice per notice sent, naming no content.
    assert server.server is not None
    store = server.server.store

    def notices_recorded() -> list[Any]:
        query = AuditQuery(object_id=LEAD, action=Action.ERASE_NOTICE.value)
        return [e.event for e in server.run(store.audit_entries(query))]

    # The platform's two streams (live, then the replay) and the ministry's.
    wait_until(lambda: len(notices_recorded()) == 3, 30, "the notices' audit entries")
    assert sorted((e.actor, e.owner) for e in notices_recorded()) == sorted(
        [
            (platform.partner_id, ngo.partner_id),
            (platform.partner_id, ngo.partner_id),
            (ministry.partner_id, ngo.partner_id),
        ]
    )
    assert all(e.detail["versions"] == 1 for e in notices_recorded())

    if server.settings.kafka.bootstrap:
        topics = {
            t
            for p in (ngo, platform, ministry, outsider)
            for t in policy.subscription_topics(server.partner(p))
        }
        assert_no_copy_on_kafka(server, sorted(topics))
    else:
        assert_no_copy_in_bus_files(tmp_path / "data")


def assert_no_copy_in_bus_files(data: Path) -> None:
    """The raw embedded bus files (database, WAL, shared memory) hold no byte of it."""
    files = [data / f"bus.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]

    def holding() -> list[str]:
        return [f.name for f in files if f.exists() and SECRET.encode() in f.read_bytes()]

    # The WAL is truncated after the tombstone (retried while a reader blocks it).
    wait_until(lambda: not holding(), 10, "the bus files to hold no copy")


def assert_no_copy_on_kafka(server: ServerThread, topics: list[str]) -> None:
    """Every record of every topic, read with kcat and compacted as Kafka's log cleaner
    does (the last record per key stays; a key whose last record is a tombstone keeps
    nothing): no copy. Object topics were created compacted, the audit topic not."""
    from tests.kcat import kcat_read  # noqa: PLC0415

    assert server.server is not None
    bus = server.server.bus
    assert isinstance(bus, KafkaBus)
    store = server.server.store
    ends = server.run(store.relay_positions(topics))
    counts: dict[str, int] = {}
    for (topic, _), offset in ends.items():
        counts[topic] = counts.get(topic, 0) + offset
    counts = {t: n for t, n in counts.items() if n}
    assert counts
    bootstrap = server.settings.kafka.bootstrap
    for topic, count in counts.items():
        records = kcat_read(bootstrap, bus.kafka_topic(topic), expect=count)
        assert any(r["value"] is None for r in records), f"no tombstone on {topic}"
        compacted: dict[Any, Any] = {}
        for record in records:
            compacted.pop(record["key"], None)
            if record["value"] is not None:
                compacted[record["key"]] = record
        assert all(SECRET not in orjson.dumps(r).decode() for r in compacted.values()), topic
        assert all(SECRET not in orjson.dumps(r["headers"]).decode() for r in records), topic
    configs = server.run(_topic_configs(bootstrap, [bus.kafka_topic(t) for t in counts]))
    for name, config in configs.items():
        assert config.get("cleanup.policy") == "compact", name
        assert config.get("delete.retention.ms") == str(30 * 24 * 3600 * 1000), name


async def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.admin.config_resource import (  # noqa: PLC0415
        ConfigResource,
        ConfigResourceType,
    )

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            out[name] = {e[0]: e[1] for e in entries}
    return out


def test_erasing_one_partners_copy_of_an_observable_leaves_the_others(
    server: ServerThread,
) -> None:
    """Two partners hold a copy of one observable (same id): the first erases its own;
    the tombstone (keyed ``<id>#<partner>``) takes only that copy off the topics, and
    subscribers are told of that copy only."""
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    ministry = server.add_partner("labour-ministry", sector="government")
    address = {
        "type": "email-addr",
        "spec_version": "2.1",
        "id": "email-addr--2d3e1c55-7b0a-4b7e-8c1d-3f9a6e5b4c21",
        "value": "recruiter@example.org",
        "object_marking_refs": [TLP_IDS[Tlp.GREEN]],
    }
    for who in (ngo, platform):
        with ExchangeClient(server.target, token=who.token) as c:
            assert c.submit(make_bundle([address])).ok
    live = Stream(server, ministry)
    try:
        with ExchangeClient(server.target, token=ngo.token) as c:
            c.erase(str(address["id"]), reason="inaccurate")
        caught_up(server, ministry, live)
        [notice] = live.notices()
        assert (notice.object_id, notice.submitter) == (address["id"], ngo.partner_id)
    finally:
        live.close()
    replay = Stream(server, ministry, from_beginning=True)
    try:
        caught_up(server, ministry, replay)
        assert [(d.object_id, d.submitter) for d in replay.objects()] == [
            (address["id"], platform.partner_id)
        ]
        assert [d.submitter for d in replay.notices()] == [ngo.partner_id]
    finally:
        replay.close()
    assert server.server is not None
    bus = server.server.bus
    # The last record of each partition stays (a tombstone deletes only earlier ones).
    ends = {tp: off for tp, off in relayed_positions(server, ministry).items() if tp[0] == "green"}
    reader = server.run(bus.open_reader(dict.fromkeys(ends)))
    records: list[Any] = []

    def read_to_the_end() -> bool:
        records.extend(server.run(reader.read(100, 0.1)))
        held = {(r.partition, r.offset) for r in records}
        return all((tp[1], end - 1) in held for tp, end in ends.items() if end)

    wait_until(read_to_the_end, 30, "the green topic's records")
    server.run(reader.close())
    keys = {r.key for r in records}
    assert keys == {
        f"{address['id']}#{ngo.partner_id}".encode(),
        f"{address['id']}#{platform.partner_id}".encode(),
    }
    # Compacted as Kafka's cleaner would (the embedded bus already did): the platform's
    # copy stays, the NGO's is gone.
    compacted: dict[bytes, bytes] = {}
    for record in records:
        compacted.pop(record.key, None)
        if record.value:
            compacted[record.key] = record.value
    assert list(compacted) == [f"{address['id']}#{platform.partner_id}".encode()]


def test_a_repeated_tombstone_gives_one_notice(server: ServerThread) -> None:
    """The relay publishes at least once: a tombstone published again (after a crash
    between publishing and recording) is not a second notice on a stream."""
    ngo = server.add_partner("harbor-light")
    platform = server.add_partner("kestrel-social", sector="technology")
    live = Stream(server, platform)
    assert server.server is not None
    store, bus = server.server.store, server.server.bus
    try:
        lead = indicator(ngo.identity, tlp=Tlp.GREEN, description=SECRET)
        with ExchangeClient(server.target, token=ngo.token) as c:
            assert c.submit(make_bundle([lead])).ok
            c.erase(str(lead["id"]), reason="other")
        caught_up(server, platform, live)
        [erasure] = server.run(store.erasures_of(str(lead["id"])))
        records = to_erasure_records(erasure, server.run(store.list_partners()))
        landed = server.run(bus.publish(records))
        positions = {tp: offset + 1 for tp, offset in landed}  # type: ignore[misc]
        server.run(store.mark_erasures_published([erasure.erasure_id], positions))
        caught_up(server, platform, live)
        assert len(live.notices()) == 1
    finally:
        live.close()
