"""Erasure on the bus: the copy keys, the tombstones' headers (nothing a topic's reader may
not see), reading them back, the embedded bus compacting at once, and a notice's
encoding (the pre-encoded path equals protobuf's)."""

from __future__ import annotations

import dataclasses
import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
import pytest
from exchange_client import Delivery as SdkDelivery
from exchange_client import ErasureNotice
from exchange_protocol.pb import exchange_pb2 as pb

from exchange import policy
from exchange.bus import BusRecord, ReadRecord
from exchange.bus.kafka import KafkaBus
from exchange.bus.local import LocalBus
from exchange.config import KafkaSettings, load_settings
from exchange.envelope import (
    ErasureRecord,
    copy_key,
    from_record,
    object_id_of,
    read_record,
    to_erasure_records,
    to_records,
)
from exchange.errors import InvalidArgument
from exchange.model import (
    Audience,
    ErasedVersion,
    EraseReason,
    Erasure,
    Partner,
    PartnerKind,
    StoredObject,
    Tlp,
    ValidObject,
)
from exchange.services._deliveries import subscribe_response_bytes
from exchange.services.exchange import subscribe_response
from exchange.subscriptions import Batch, Delivery, Notice

LEAD = "indicator--0b6b9a5e-1c1a-4f3e-9d55-8f2f4b1e7a10"
PHONE = "x-phone-number--5d7e2a66-5a1c-5e57-9c1f-7a2b1d0c3e44"


def read_back(record: BusRecord, offset: int = 0) -> ReadRecord:
    return ReadRecord(record.topic, 0, offset, record.key, record.value, record.headers)


def test_an_observable_copy_is_keyed_by_its_partner() -> None:
    assert copy_key(LEAD, "indicator", "ngo-1") == LEAD.encode()
    assert copy_key(PHONE, "ipv4-addr", "ngo-1") == f"{PHONE}#ngo-1".encode()
    assert object_id_of(f"{PHONE}#ngo-1".encode()) == PHONE
    assert object_id_of(LEAD.encode()) == LEAD
    obj = ValidObject(PHONE, "ipv4-addr", "", "identity--x", Tlp.GREEN, b'{"value":"1"}')
    stored = StoredObject(1, "ngo-1", 1.0, obj, Audience(Tlp.GREEN, "ngo-1"))
    (record,) = to_records(stored, ["green"])
    assert record.key == f"{PHONE}#ngo-1".encode()
    assert from_record(read_back(record)).obj.object_id == PHONE


def erasure() -> Erasure:
    # v1 for a community and a named recipient; v2 (widened) also for another one.
    v1 = Audience(
        Tlp.AMBER, "ngo-1", communities=frozenset({"c1"}), recipients=frozenset({"min-2"})
    )
    v2 = Audience(
        Tlp.AMBER,
        "ngo-1",
        communities=frozenset({"c1"}),
        recipients=frozenset({"min-2", "plat-3"}),
    )
    return Erasure(
        erasure_id=7,
        object_id=LEAD,
        object_type="indicator",
        submitter="ngo-1",
        created_by_ref="identity--ngo",
        versions=(
            ErasedVersion("2026-01-01T00:00:00.000Z", v1, "d1"),
            ErasedVersion("2026-01-02T00:00:00.000Z", v2, "d2"),
        ),
        reason=EraseReason.VICTIM_DATA,
        erased_by="ngo-1",
        erased_at=1767225600.5,
        referenced_by=(("sighting--1", v1),),
    )


def test_a_tombstone_per_topic_says_only_what_its_readers_may_see() -> None:
    records = {r.topic: r for r in to_erasure_records(erasure(), [])}
    assert list(records) == ["community.c1", "partner.min-2", "partner.ngo-1", "partner.plat-3"]
    for topic, record in records.items():
        assert record.tombstone and record.value == b"" and record.key == LEAD.encode()
        headers = dict(record.headers)
        assert headers["erasure-id"] == b"7" and headers["erasure-reason"] == b"victim-data"
        # Routing: the shared and community topics, and this one; never another partner's.
        topics = orjson.loads(headers["topics"])
        assert [t for t in topics if t.startswith("partner.")] in ([], [topic])
        versions = orjson.loads(headers["erased-versions"])
        for listed in versions:
            recipients = set(listed["audience"]["recipients"])
            reader = topic.removeprefix("partner.")
            assert recipients <= ({reader} if topic.startswith("partner.") else set())
        # The partner's recipient of v2 only is told of v2 only.
        if topic == "partner.plat-3":
            assert [v["version"] for v in versions] == ["2026-01-02T00:00:00.000Z"]
        everything = b"".join(v for _, v in record.headers)
        assert b"sighting--1" not in everything  # referring objects: from the store only
        assert b"min-2" not in everything or topic == "partner.min-2"
        assert b"plat-3" not in everything or topic == "partner.plat-3"
    back = read_record(read_back(records["partner.min-2"]))
    assert isinstance(back, ErasureRecord)
    assert (back.erasure_id, back.object_id, back.reason) == (7, LEAD, "victim-data")
    assert back.submitter == "ngo-1" and back.submitter_identity == "identity--ngo"
    assert back.topics == ("community.c1", "partner.min-2")
    assert [v.version for v in back.versions] == [v.version for v in erasure().versions]
    assert all(v.audience.recipients == frozenset({"min-2"}) for v in back.versions)
    # The subscriber reading both the community and its own topic takes it from the first.
    subscribed = frozenset({"community.c1", "partner.min-2"})
    assert policy.delivers_from("community.c1", records_topics(records, "community.c1"), subscribed)
    assert not policy.delivers_from("partner.min-2", back.topics, subscribed)


def records_topics(records: dict[str, BusRecord], topic: str) -> tuple[str, ...]:
    return tuple(orjson.loads(dict(records[topic].headers)["topics"]))


def test_an_audience_excluding_kinds_fans_tombstones_out_to_its_partner_topics() -> None:
    audience = Audience(Tlp.GREEN, "ngo-1", excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))
    one = dataclasses.replace(
        erasure(), versions=(ErasedVersion("2026-01-01T00:00:00.000Z", audience, "d"),)
    )
    partners = [
        Partner("ngo-1", "NGO", "identity--ngo", PartnerKind.NGO),
        Partner("plat-3", "Platform", "identity--p", PartnerKind.TECH),
        Partner("min-2", "Ministry", "identity--m", PartnerKind.GOVERNMENT),
    ]
    # The government partner never received it: no tombstone on its topic.
    assert {r.topic for r in to_erasure_records(one, partners)} == {
        "partner.ngo-1",
        "partner.plat-3",
    }


async def test_the_local_bus_compacts_a_tombstones_key_at_once(tmp_path: Path) -> None:
    bus = LocalBus(tmp_path / "bus.sqlite3")
    await bus.start()
    try:
        await bus.ensure_topics(["green"])
        secret = b"ERASE-ME-4471"
        await bus.publish(
            [
                BusRecord("green", b"k1", b"v1 " + secret),
                BusRecord("green", b"k2", b"v1 other"),
                BusRecord("green", b"k1", b"v2 " + secret),
            ]
        )
        placed = await bus.publish(
            [BusRecord("green", b"k1", b"", (("erasure-id", b"1"),), tombstone=True)]
        )
        assert placed == [(("green", 0), 3)]
        after = await bus.publish([BusRecord("green", b"k3", b"later")])
        assert after == [(("green", 0), 4)]  # offsets stay dense for what is published
        reader = await bus.open_reader({("green", 0): None})
        got = await reader.read(10, 1.0)
        await reader.close()
        assert [(r.offset, r.key, r.value) for r in got] == [
            (1, b"k2", b"v1 other"),
            (3, b"k1", b""),
            (4, b"k3", b"later"),
        ]
        assert await bus.checkpoint()
    finally:
        await bus.close()
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / f"bus.sqlite3{suffix}"
        if path.exists():
            assert secret not in path.read_bytes(), path.name


def test_a_notice_is_encoded_as_protobuf_encodes_it() -> None:
    notice = Notice(
        erasure_id=7,
        object_id=LEAD,
        object_type="indicator",
        submitter="ngo-1",
        submitter_identity="identity--ngo",
        versions=("2026-01-01T00:00:00.000Z",),
        reason="victim-data",
        erased_at=1767225600.5,
        referenced_by=("sighting--1",),
    )
    obj = ValidObject(
        LEAD, "indicator", "2026-01-03T00:00:00.000Z", "identity--ngo", Tlp.GREEN, b"{}"
    )
    stored = StoredObject(3, "ngo-1", 2.0, obj, Audience(Tlp.GREEN, "ngo-1"))
    batch = Batch([Delivery(stored, "c1"), Delivery(notice, "c2")], "c3", notices=1)
    encoded = subscribe_response_bytes(batch)
    assert encoded == subscribe_response(batch).SerializeToString()
    message = pb.SubscribeResponse.FromString(encoded)
    sent = message.deliveries[1]
    assert sent.HasField("erased") and not message.deliveries[0].HasField("erased")
    assert (sent.object, sent.version, sent.object_id) == (b"", "", LEAD)
    assert list(sent.erased.versions) == ["2026-01-01T00:00:00.000Z"]
    assert list(sent.erased.referenced_by) == ["sighting--1"]
    assert sent.erased.erased_at.ToNanoseconds() == 1767225600_500000000


def notice_message() -> pb.Delivery:
    message = pb.Delivery(
        object_id=LEAD,
        object_type="indicator",
        submitter="ngo-1",
        submitter_identity="identity--ngo",
        cursor="c9",
    )
    message.erased.versions.extend(["2026-01-01T00:00:00.000Z"])
    message.erased.reason = "victim-data"
    message.erased.erased_at.FromNanoseconds(1767225600_500000000)
    message.erased.referenced_by.extend(["sighting--1"])
    return message


def test_the_sdk_tells_a_notice_from_an_object() -> None:
    notice = SdkDelivery._from_pb(notice_message())
    assert notice.erased == ErasureNotice(
        object_id=LEAD,
        versions=("2026-01-01T00:00:00.000Z",),
        reason="victim-data",
        erased_at=datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        referenced_by=("sighting--1",),
        submitter="ngo-1",
    )
    assert notice.object_json == b""
    with pytest.raises(ValueError, match="erasure notice"):
        _ = notice.object
    obj = SdkDelivery._from_pb(pb.Delivery(object=b'{"id": "x"}', object_id="x", cursor="c"))
    assert obj.erased is None and obj.object == {"id": "x"}


def test_exchange_subscribe_prints_a_notice() -> None:
    from exchange.cli.subscribe import _notice_line, _notice_record  # noqa: PLC0415

    delivery = SdkDelivery._from_pb(notice_message())
    assert delivery.erased is not None
    line = click.unstyle(_notice_line(delivery, delivery.erased))
    assert "ERASED" in line and LEAD in line and "victim-data" in line
    assert "2026-01-01T00:00:00.000Z" in line and "sighting--1" in line and "\n" not in line
    record = _notice_record(delivery, delivery.erased)
    assert "object" not in record
    assert record["erased"] == {
        "versions": ["2026-01-01T00:00:00.000Z"],
        "reason": "victim-data",
        "erased_at": "2026-01-01T00:00:00.500000Z",
        "referenced_by": ["sighting--1"],
    }
    assert (record["object_id"], record["cursor"]) == (LEAD, "c9")


def test_the_platform_feed_example_forgets_an_erased_lead(tmp_path: Path) -> None:
    path = Path(__file__).parents[2] / "clients" / "python" / "examples" / "platform_feed.py"
    spec = importlib.util.spec_from_file_location("platform_feed", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    forget = example.forget

    matches = tmp_path / "matches.jsonl"
    kept = {"indicator_id": "indicator--other", "version": "v"}
    rows = [
        {"indicator_id": LEAD, "version": "2026-01-01T00:00:00.000Z"},
        kept,
        {"indicator_id": LEAD, "version": "2026-01-05T00:00:00.000Z"},  # not erased
    ]
    matches.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows))
    notice = SdkDelivery._from_pb(notice_message()).erased
    assert notice is not None
    assert forget(matches, notice) == 1
    assert [orjson.loads(line) for line in matches.read_text().splitlines()] == rows[1:]


def test_object_topics_are_created_compacted_and_the_audit_topic_not() -> None:
    compacted = KafkaBus(KafkaSettings(bootstrap="127.0.0.1:1"), "tix")
    assert compacted.topic_configs("green") == {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(30 * 24 * 3600 * 1000),
    }
    assert compacted.topic_configs("partner.ngo-1")["cleanup.policy"] == "compact"
    assert compacted.topic_configs("audit") == {}
    plain = KafkaBus(KafkaSettings(bootstrap="127.0.0.1:1", compact_topics=False), "tix")
    assert plain.topic_configs("green") == {}
    with pytest.raises(InvalidArgument, match="delete_retention_ms"):
        load_settings(None, environ={"EXCHANGE_KAFKA_DELETE_RETENTION_MS": "-1"})
