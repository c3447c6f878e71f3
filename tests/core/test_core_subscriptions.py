"""Subscriptions on their own: Subscriptions.serve over a temporary SQLite store and
the LocalBus, fed by Ingest and the relay, with no server. A stream delivers what its
partner may see once each, in order, across relay repeats and records the exchange
did not write; a cursor resumes with no gap and no repeat; shutting down ends the
open streams. The shared tail's window and switching are in
tests/integration/test_subscriptions_tail.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from exchange._tasks import cancel_and_wait
from exchange.auth import Access, Authenticator
from exchange.bus import BusRecord
from exchange.errors import ResourceExhausted, Unavailable
from exchange.ingest import Ingest
from exchange.model import Partner, Tlp
from exchange.relay import Relay
from exchange.store.sqlite import SqliteStore
from exchange.subscriptions import Batch, Notice, SubscriptionRequest, Subscriptions
from tests.core.edges import CREDENTIALS, NGO, PLATFORM, FlakyBus, eventually, raw
from tests.helpers import indicator


@dataclass
class Stream:
    """One Subscribe stream, served by its own task into ``batches``."""

    task: asyncio.Task[None]
    batches: list[Batch] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [
            d.stored.object_id if isinstance(d.stored, Notice) else d.stored.obj.object_id
            for b in self.batches
            for d in b.deliveries
        ]

    def cursors(self) -> list[str]:
        return [d.cursor for b in self.batches for d in b.deliveries]

    async def until(self, count: int) -> list[str]:
        await eventually(lambda: len(self.ids()) >= count or self.task.done(), f"{count}")
        if self.task.done():
            self.task.result()  # raises what ended the stream
        return self.ids()


@pytest.fixture
async def subs(store: SqliteStore, bus: FlakyBus) -> AsyncIterator[Subscriptions]:
    instance = Subscriptions(store, bus, max_open_per_partner=2, idle_wait_s=0.05)
    try:
        yield instance
    finally:
        await instance.close()


async def open_stream(
    subs: Subscriptions, store: SqliteStore, partner: Partner, **request: Any
) -> Stream:
    auth = Authenticator(store)
    token = CREDENTIALS[partner.partner_id][1]
    access = Access(auth, await auth.authenticate([("authorization", f"Bearer {token}")]))
    batches: list[Batch] = []

    async def send(batch: Batch) -> None:
        batches.append(batch)

    task = asyncio.create_task(subs.serve(access, SubscriptionRequest(**request), send))
    stream = Stream(task, batches)
    # The first message (the start cursor) says the stream is established.
    await eventually(lambda: bool(batches) or task.done(), "the stream to start")
    return stream


async def publish(ingest: Ingest, relay: Relay, objs: list[dict[str, Any]]) -> list[str]:
    await ingest.submit(NGO, raw(objs))
    while await relay.flush_once():
        pass
    return [o["id"] for o in objs]


async def test_each_visible_object_once_in_order_across_repeats_and_foreign_records(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus, subs: Subscriptions
) -> None:
    relay = Relay(store, bus)
    greens = [indicator(NGO.identity_id, n=i) for i in range(4)]
    ambers = [indicator(NGO.identity_id, n=10 + i, tlp=Tlp.AMBER) for i in range(2)]
    await ingest.submit(NGO, raw([*greens[:2], *ambers, *greens[2:]]))
    # The first publish lands but its answer is lost: the relay publishes it again.
    bus.fail, bus.when = 1, "after"
    with pytest.raises(Unavailable):
        await relay.flush_once()
    assert await relay.flush_once() == 6
    # A record the exchange did not write, then more objects behind it.
    await bus.publish([BusRecord("green", b"k", b"not an exchange record", ())])
    later = await publish(ingest, relay, [indicator(NGO.identity_id, n=20 + i) for i in range(2)])
    green_ids = [o["id"] for o in greens] + later

    platform = await open_stream(subs, store, PLATFORM, from_beginning=True)
    ngo = await open_stream(subs, store, NGO, from_beginning=True)
    try:
        assert await platform.until(len(green_ids)) == green_ids
        mine = await ngo.until(len(green_ids) + len(ambers))
        assert sorted(mine) == sorted(green_ids + [o["id"] for o in ambers])
        # Live: published after the streams opened.
        live = await publish(ingest, relay, [indicator(NGO.identity_id, n=30)])
        assert await platform.until(len(green_ids) + 1) == green_ids + live
        await ngo.until(len(mine) + 1)
        assert len(ngo.ids()) == len(set(ngo.ids())) == len(mine) + 1
    finally:
        await cancel_and_wait(platform.task, ngo.task)


async def test_a_cursor_resumes_with_no_gap_and_no_repeat(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus, subs: Subscriptions
) -> None:
    relay = Relay(store, bus)
    ids = await publish(ingest, relay, [indicator(NGO.identity_id, n=i) for i in range(6)])
    first = await open_stream(subs, store, PLATFORM, from_beginning=True)
    try:
        assert await first.until(6) == ids
    finally:
        await cancel_and_wait(first.task)

    resumed = await open_stream(subs, store, PLATFORM, cursor=first.cursors()[2])
    try:
        more = await publish(ingest, relay, [indicator(NGO.identity_id, n=10)])
        assert await resumed.until(4) == ids[3:] + more
    finally:
        await cancel_and_wait(resumed.task)


async def test_from_now_with_a_label_filter(
    ingest: Ingest, store: SqliteStore, bus: FlakyBus, subs: Subscriptions
) -> None:
    relay = Relay(store, bus)
    await publish(ingest, relay, [indicator(NGO.identity_id, n=0, labels=("wanted",))])
    stream = await open_stream(subs, store, PLATFORM, labels=frozenset({"wanted"}))
    try:
        objs = [
            indicator(NGO.identity_id, n=1 + i, labels=(("wanted",), ("other",))[i % 2])
            for i in range(4)
        ]
        ids = await publish(ingest, relay, objs)
        assert await stream.until(2) == ids[0::2]
        # One more wanted one: nothing else came in between.
        last = await publish(ingest, relay, [indicator(NGO.identity_id, n=9, labels=("wanted",))])
        assert await stream.until(3) == ids[0::2] + last
    finally:
        await cancel_and_wait(stream.task)


async def test_the_partner_limit_and_shutdown_end_streams_with_a_reason(
    store: SqliteStore, subs: Subscriptions
) -> None:
    streams = [await open_stream(subs, store, PLATFORM) for _ in range(2)]
    refused = await open_stream(subs, store, PLATFORM)
    with pytest.raises(ResourceExhausted, match="max_open_per_partner"):
        refused.task.result()
    other = await open_stream(subs, store, NGO)  # another partner's slots are its own
    assert subs.open_of(PLATFORM.partner_id) == 2 and subs.open_of(NGO.partner_id) == 1

    subs.begin_shutdown()
    for stream in [*streams, other]:
        await eventually(stream.task.done, "the stream to end")
        with pytest.raises(Unavailable, match="shutting down"):
            stream.task.result()
    late = await open_stream(subs, store, NGO)
    with pytest.raises(Unavailable, match="shutting down"):
        late.task.result()
    assert subs.open_count == 0
