"""The relay on its own: a temporary SQLite store filled by Ingest, the LocalBus
behind a wrapper that fails on cue. Publishing that fails is retried with growing
delays and loses nothing; a publish whose answer is lost is published again (at
least once); a relay without the lease publishes nothing, and one that loses it
mid-batch leaves the batch to the new holder. The set-aside path and the headers
are in tests/integration/test_relay.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import pytest

from exchange._tasks import cancel_and_wait
from exchange.envelope import from_record
from exchange.errors import Unavailable
from exchange.ingest import Ingest
from exchange.relay import Relay
from exchange.store import Store
from exchange.store.sqlite import SqliteStore
from tests.core.edges import NGO, FlakyBus, Lease, Replica, eventually, raw, read_topic
from tests.helpers import indicator


async def submit_green(ingest: Ingest, count: int) -> list[str]:
    """``count`` GREEN objects in one bundle; their ids, in bundle order."""
    objs = [indicator(NGO.identity_id, n=i) for i in range(count)]
    await ingest.submit(NGO, raw(objs))
    return [o["id"] for o in objs]


async def on_green(bus: FlakyBus) -> list[tuple[int, str]]:
    """(exchange seq, object id) of every record on the green topic, in offset order."""
    out = []
    for record in await read_topic(bus, "green"):
        stored = from_record(record)
        out.append((stored.seq, stored.obj.object_id))
    return out


async def outbox_empty(store: SqliteStore) -> bool:
    return not await store.pending_outbox(1)


@pytest.fixture
async def running(store: SqliteStore, bus: FlakyBus) -> AsyncIterator[Relay]:
    """A relay running its loop, polling every 20 ms (nothing wakes it: SQLite)."""
    relay = Relay(store, bus, poll_interval_s=0.02)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        await cancel_and_wait(task)


async def test_failed_publishes_are_retried_with_growing_delays_and_nothing_is_lost(
    ingest: Ingest,
    store: SqliteStore,
    bus: FlakyBus,
    running: Relay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "exchange.relay")
    bus.fail = 3
    ids = await submit_green(ingest, 5)
    await eventually(lambda: outbox_empty(store), "the outbox to empty")

    records = await on_green(bus)
    assert [oid for _, oid in records] == ids  # once each, in submission order
    assert [seq for seq, _ in records] == sorted(seq for seq, _ in records)
    assert running.published == 5 and bus.publishes == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"relay: publishing failed (the bus is down (on cue)); retrying in {delay} s"
        for delay in ("0.1", "0.2", "0.4")
    ]


async def test_a_publish_whose_answer_is_lost_is_published_again(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus, running: Relay
) -> None:
    bus.fail, bus.when = 1, "after"
    ids = await submit_green(ingest, 3)
    await eventually(lambda: outbox_empty(store), "the outbox to empty")

    # At least once: the batch is on the bus twice, the same sequence numbers each
    # time (subscribers drop the repeat by them), counted as published once.
    records = await on_green(bus)
    assert [oid for _, oid in records] == ids + ids
    assert records[:3] == records[3:]
    assert running.published == 3


async def test_a_relay_without_the_lease_publishes_nothing_until_it_gets_it(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "exchange.relay")
    lease = Lease(holder="another replica")
    replica = Replica(store, lease, "this one")
    relay = Relay(cast(Store, replica), bus, poll_interval_s=0.02)
    task = asyncio.create_task(relay.run())
    try:
        ids = await submit_green(ingest, 2)
        await eventually(lambda: relay.leading is False, "the relay to look at the lease")
        # Three passes later the rows still wait, and nothing reached the bus.
        looks = replica.looks
        await eventually(lambda: replica.looks >= looks + 3, "three more passes")
        assert len(await store.pending_outbox(10)) == 2
        assert bus.publishes == 0 and await on_green(bus) == []

        lease.holder = "this one"
        await eventually(lambda: outbox_empty(store), "the new lease holder to publish")
        assert [oid for _, oid in await on_green(bus)] == ids
        assert relay.leading is True
    finally:
        await cancel_and_wait(task)
    assert [r.getMessage() for r in caplog.records] == [
        "relay: another process relays the outbox",
        "relay: this process relays the outbox now",
    ]


async def test_a_relay_that_loses_the_lease_mid_batch_leaves_it_to_the_new_holder(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus
) -> None:
    lease = Lease(holder="a")
    relay_a = Relay(cast(Store, Replica(store, lease, "a")), bus)
    relay_b = Relay(cast(Store, Replica(store, lease, "b")), bus)
    ids = await submit_green(ingest, 3)

    def lease_moves() -> None:
        lease.holder = "b"

    # The batch lands on the bus while the lease moves to b, and a's publish fails.
    bus.on_publish = lease_moves
    bus.fail, bus.when = 1, "after"
    with pytest.raises(Unavailable):
        await relay_a.flush_once()
    bus.on_publish = lambda: None
    assert len(await store.pending_outbox(10)) == 3

    assert await relay_a.flush_once() == 0 and relay_a.leading is False
    assert await relay_b.flush_once() == 3 and relay_b.leading is True
    assert await relay_b.flush_once() == 0
    assert await outbox_empty(store)
    # The batch twice, same sequence numbers: repeats subscribers drop.
    records = await on_green(bus)
    assert [oid for _, oid in records] == ids + ids and records[:3] == records[3:]
