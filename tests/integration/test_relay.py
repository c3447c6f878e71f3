"""The relay on a real store and a real bus: a record the bus refuses is set aside and
the rest of the outbox flows on; what each record's headers show its topic's readers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from exchange import policy
from exchange.auth import new_token_credential
from exchange.bus import Bus
from exchange.bus.kafka import KafkaBus
from exchange.config import KafkaSettings, Limits
from exchange.envelope import MAX_LABELS_HEADER_BYTES, from_record
from exchange.metrics import Metrics
from exchange.model import Audience, AudienceRequest, Partner, PartnerKind, Tlp, ValidObject
from exchange.relay import Relay
from exchange.stix import validate_objects
from exchange.store.sqlite import SqliteStore
from tests.helpers import indicator

NGO = Partner(
    "ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44", kind=PartnerKind.NGO
)
PLATFORM = Partner(
    "plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7", kind=PartnerKind.TECH
)
MINISTRY = Partner(
    "gov-1",
    "Northgate",
    "identity--4a84ce21-155b-5144-9e57-4e3a861176e2",
    kind=PartnerKind.GOVERNMENT,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    instance = SqliteStore(tmp_path / "exchange.sqlite3")
    await instance.open()
    for partner in (NGO, PLATFORM, MINISTRY):
        await instance.add_partner(partner, new_token_credential(partner.partner_id, now=1.0)[0])
    try:
        yield instance
    finally:
        await instance.close()


def valid(objects: list[dict[str, object]]) -> list[ValidObject]:
    checked = validate_objects(
        objects, submitter_identity=NGO.identity_id, default_tlp=Tlp.GREEN, limits=Limits()
    )
    assert all(isinstance(c, ValidObject) for c in checked), checked
    return [c for c in checked if isinstance(c, ValidObject)]


async def commit(store: SqliteStore, objects: list[ValidObject], audience: Audience) -> None:
    await store.commit_objects(NGO, [(o, audience) for o in objects], 1.0, policy.widen)


async def read_all(bus: Bus, topic: str, count: int) -> list[object]:
    reader = await bus.open_reader({(topic, p): None for p in await bus.partitions(topic)})
    try:
        records: list[object] = []
        for _ in range(100):
            records += await reader.read(100, 0.2)
            if len(records) >= count:
                break
        return records
    finally:
        await reader.close()


@pytest.mark.kafka
async def test_a_record_the_bus_refuses_is_set_aside_and_the_rest_flows(
    store: SqliteStore, tansu: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A broker that takes records of at most 200 KB (as a topic's max.message.bytes
    # below the exchange's kafka.max_record_bytes would): Tansu has no such limit, so
    # the producer side of the bus is set to it.
    settings = KafkaSettings(bootstrap=tansu, enable_idempotence=False, max_record_bytes=200_000)
    bus = KafkaBus(settings, f"t{uuid.uuid4().hex[:12]}")
    await bus.start()
    metrics = Metrics(process=False)
    try:
        small = valid([indicator(NGO.identity_id, n=n) for n in range(3)])
        big = valid([indicator(NGO.identity_id, n=9, labels=["x" * 90_000] * 3)])
        green = Audience(Tlp.GREEN, NGO.partner_id)
        await commit(store, small[:1] + big + small[1:], green)
        relay = Relay(store, bus, metrics=metrics)
        with caplog.at_level(logging.ERROR, logger="exchange.relay"):
            assert await relay.flush_once() == 4
        # The outbox is empty: nothing is retried in front of later rows.
        assert await relay.flush_once() == 0
        assert relay.published == 3
        (aside,) = await store.set_aside_rows()
        assert aside.object_id == big[0].object_id
        assert "too large" in aside.reason and "green" in aside.reason
        assert big[0].object_id in caplog.text
        assert metrics.relay_set_aside._value.get() == 1
        # Later objects are published as usual.
        later = valid([indicator(NGO.identity_id, n=20)])
        await commit(store, later, green)
        assert await relay.flush_once() == 1
        records = await read_all(bus, "green", 4)
        ids = [from_record(r).obj.object_id for r in records]  # type: ignore[arg-type]
        assert sorted(ids) == sorted(o.object_id for o in small + later)
    finally:
        await bus.close()


async def test_headers_show_each_topic_only_what_its_readers_may_see(
    store: SqliteStore, bus: Bus
) -> None:
    # An AMBER+STRICT sighting named for the platform, routed also to the creator of
    # what it sights (an implied recipient), with labels too long for a header.
    labels = [f"trafficking:lead-{i:04d}-" + "x" * 40 for i in range(40)]
    (sighting,) = valid([indicator(NGO.identity_id, n=1, labels=labels, tlp=Tlp.AMBER_STRICT)])
    audience = policy.audience_for(
        sighting,
        NGO,
        AudienceRequest(recipients=frozenset({PLATFORM.partner_id})),
        implied_recipients=[MINISTRY],
    )
    assert isinstance(audience, Audience)
    await commit(store, [sighting], audience)
    assert await Relay(store, bus).flush_once() == 1
    seen: dict[str, Audience] = {}
    for partner in (NGO, PLATFORM, MINISTRY):
        topic = policy.partner_topic(partner.partner_id)
        (record,) = await read_all(bus, topic, 1)
        headers = dict(record.headers)  # type: ignore[attr-defined]
        assert "labels" not in headers  # longer than MAX_LABELS_HEADER_BYTES
        assert len(orjson.dumps(labels)) > MAX_LABELS_HEADER_BYTES
        stored = from_record(record)  # type: ignore[arg-type]
        assert list(stored.obj.labels) == labels  # read from the object instead
        # No reader learns of another partner topic than its own.
        assert stored.topics == (topic,)
        assert policy.may_receive(partner, stored.audience)
        seen[partner.partner_id] = stored.audience
    # The submitter's own record says nothing of who else it went to.
    assert seen[NGO.partner_id].recipients == frozenset()
    assert seen[NGO.partner_id].implied == frozenset()
    assert seen[PLATFORM.partner_id].recipients == {PLATFORM.partner_id}
    assert seen[MINISTRY.partner_id].implied == {MINISTRY.partner_id}
    assert seen[MINISTRY.partner_id].recipients == frozenset()
