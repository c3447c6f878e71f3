"""The audit recorder gathers deliveries: one DELIVER entry per recipient, owner and
span lists what that partner received, on a real SQLite file. Every delivery noted is
in exactly one entry, entries never mix owners (each owner reads only its own), an
implied recipient's deliveries name no owner, and the log keeps the order of events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange.audit.entries import MAX_LISTED, Action, AuditQuery, Event, body_digest
from exchange.audit.recorder import AuditRecorder
from exchange.model import Audience, StoredObject, Tlp, ValidObject
from exchange.store.sqlite import SqliteStore


def stored(
    n: int, submitter: str = "ngo-1", *, implied: frozenset[str] = frozenset()
) -> StoredObject:
    oid = f"indicator--00000000-0000-4000-8000-{n:012d}"
    version = "2026-01-01T00:00:00.000Z"
    body = f'{{"id":"{oid}","n":{n}}}'.encode()
    obj = ValidObject(oid, "indicator", version, f"identity--{submitter}", Tlp.GREEN, body)
    return StoredObject(n, submitter, 1.0, obj, Audience(Tlp.GREEN, submitter, implied=implied))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "exchange.sqlite3")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def entries(store: SqliteStore) -> list[Event]:
    return [e.event for e in await store.audit_entries(AuditQuery(limit=10_000))]


async def test_deliveries_are_gathered_per_recipient_and_owner(store: SqliteStore) -> None:
    recorder = AuditRecorder(store, delivery_span_s=60.0)
    first = [stored(n) for n in range(3)]
    recorder.note_deliveries("plat-1", first[:2], 10.0)
    recorder.note_deliveries("plat-2", first[:1], 10.5)
    recorder.note_deliveries("plat-1", [first[2], stored(9, "gov-1")], 11.0)
    # Not confirmed: a message whose write was cut short; its own entry.
    recorder.note_deliveries("plat-1", [stored(5)], 12.0, confirmed=False)
    await recorder.flush()

    got = await entries(store)
    assert all(e.action is Action.DELIVER and not e.object_id for e in got)
    by_key = {(e.actor, e.owner, e.detail.get("confirmed", True)): e for e in got}
    assert len(by_key) == len(got) == 4
    mine = by_key["plat-1", "ngo-1", True]
    assert [listed[0] for listed in mine.objects] == [s.obj.object_id for s in first]
    assert mine.objects[0] == (
        first[0].obj.object_id,
        first[0].obj.version,
        body_digest(first[0].obj.body),
    )
    # From the first delivery to the last.
    assert (mine.at, mine.detail["last_at"]) == (10.0, 11.0)
    assert [o[0] for o in by_key["plat-1", "gov-1", True].objects] == [stored(9).obj.object_id]
    assert len(by_key["plat-2", "ngo-1", True].objects) == 1
    assert by_key["plat-1", "ngo-1", False].detail["channel"] == "subscribe"
    # Every delivery once.
    assert sum(len(e.objects) for e in got) == 6


async def test_an_implied_recipients_deliveries_name_no_owner(store: SqliteStore) -> None:
    # A sighting reaches the indicator's creator because of what it refers to: the
    # sighting's submitter must not read that entry (it would learn whose indicator it was).
    recorder = AuditRecorder(store)
    recorder.note_deliveries("ngo-9", [stored(1, implied=frozenset({"ngo-9"})), stored(2)], 5.0)
    await recorder.flush()
    owners = {e.owner: [o[0] for o in e.objects] for e in await entries(store)}
    assert owners == {"": [stored(1).obj.object_id], "ngo-1": [stored(2).obj.object_id]}


async def test_an_entry_lists_at_most_max_listed(store: SqliteStore) -> None:
    recorder = AuditRecorder(store, delivery_span_s=60.0)
    objects = [stored(n) for n in range(2 * MAX_LISTED + 3)]
    for n in range(0, len(objects), 50):
        recorder.note_deliveries("plat-1", objects[n : n + 50], float(n))
    await recorder.flush()
    sizes = [len(e.objects) for e in await entries(store)]
    assert sizes == [MAX_LISTED, MAX_LISTED, 3]
    listed = [o[0] for e in await entries(store) for o in e.objects]
    assert listed == [s.obj.object_id for s in objects]


async def test_an_event_after_deliveries_follows_their_entry(store: SqliteStore) -> None:
    recorder = AuditRecorder(store, delivery_span_s=60.0)
    recorder.note_deliveries("plat-1", [stored(1)], 1.0)
    await recorder.record([Event(Action.SUBSCRIBE_END, "plat-1", 2.0)])
    recorder.note_deliveries("plat-1", [stored(2)], 3.0)
    await recorder.flush()
    assert [(e.action, [o[0] for o in e.objects]) for e in await entries(store)] == [
        (Action.DELIVER, [stored(1).obj.object_id]),
        (Action.SUBSCRIBE_END, []),
        (Action.DELIVER, [stored(2).obj.object_id]),
    ]


async def test_a_span_is_closed_and_appended_by_itself(store: SqliteStore) -> None:
    # Nobody flushes: the recorder's own loop closes a span once it is over.
    recorder = AuditRecorder(store, flush_interval_s=0.01, delivery_span_s=0.05)
    recorder.start()
    try:
        # Wall-clock seconds, as a stream notes them.
        recorder.note_deliveries("plat-1", [stored(1)], time.time())
        recorder.note_deliveries("plat-2", [stored(2)], time.time())
        async with asyncio.timeout(10):
            while len(await entries(store)) < 2:  # noqa: ASYNC110 (polling the store)
                await asyncio.sleep(0.01)
    finally:
        await recorder.close()
    assert sorted(e.actor for e in await entries(store)) == ["plat-1", "plat-2"]
