"""Ingest on its own (a temporary SQLite store, no server): what a submission
persists, and in which order its accepted versions join the outbox, which is the
order the relay publishes them in and subscribers receive them."""

from __future__ import annotations

import pytest

from exchange.errors import InvalidArgument
from exchange.ingest import Ingest
from exchange.model import AudienceRequest, ObjectOutcome, Tlp
from exchange.store.sqlite import SqliteStore
from tests.core.edges import NGO, raw
from tests.helpers import indicator, stamp

ACCEPTED, DUPLICATE, REJECTED = (
    ObjectOutcome.ACCEPTED,
    ObjectOutcome.DUPLICATE,
    ObjectOutcome.REJECTED,
)


async def queued(store: SqliteStore) -> list[tuple[int, str, str]]:
    """The outbox, oldest first: (exchange seq, object id, version)."""
    return [(r.seq, r.obj.object_id, r.obj.version) for r in await store.pending_outbox(1000)]


async def test_a_bundles_versions_are_stored_and_queued_in_bundle_order(
    ingest: Ingest, store: SqliteStore
) -> None:
    first = indicator(NGO.identity_id, n=1)
    other = indicator(NGO.identity_id, n=2, tlp=Tlp.AMBER)
    # A later version of ``first`` that revokes it: after it, no version may follow,
    # so taking the bundle out of order would refuse ``first``.
    revoked = {**first, "modified": stamp(60), "revoked": True}
    invalid = indicator(NGO.identity_id, n=3, confidence=101)
    last = indicator(NGO.identity_id, n=4)
    bundle = [first, other, revoked, invalid, last]

    results = await ingest.submit(NGO, raw(bundle))

    assert [(r.index, r.object_id, r.outcome) for r in results] == [
        (0, first["id"], ACCEPTED),
        (1, other["id"], ACCEPTED),
        (2, first["id"], ACCEPTED),
        (3, invalid["id"], REJECTED),
        (4, last["id"], ACCEPTED),
    ]
    rows = await queued(store)
    assert [(oid, version) for _, oid, version in rows] == [
        (first["id"], first["modified"]),
        (other["id"], other["modified"]),
        (first["id"], revoked["modified"]),
        (last["id"], last["modified"]),
    ]
    seqs = [seq for seq, _, _ in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for version in (first["modified"], revoked["modified"]):
        assert await store.object_copies(first["id"], version), version


async def test_later_submissions_queue_behind_earlier_ones_and_repeats_queue_nothing(
    ingest: Ingest, store: SqliteStore
) -> None:
    earlier = [indicator(NGO.identity_id, n=i) for i in range(3)]
    later = [indicator(NGO.identity_id, n=10 + i) for i in range(3)]
    await ingest.submit(NGO, raw(earlier))
    await ingest.submit(NGO, raw(later))
    again = await ingest.submit(NGO, raw(earlier[:1]))

    assert [r.outcome for r in again] == [DUPLICATE]
    rows = await queued(store)
    assert [oid for _, oid, _ in rows] == [o["id"] for o in [*earlier, *later]]
    assert [seq for seq, _, _ in rows] == sorted(seq for seq, _, _ in rows)


async def test_an_audience_naming_an_unknown_partner_stores_nothing(
    ingest: Ingest, store: SqliteStore
) -> None:
    objs = [indicator(NGO.identity_id, n=i) for i in range(2)]
    with pytest.raises(InvalidArgument, match="nobody-1"):
        await ingest.submit(NGO, raw(objs), AudienceRequest(recipients=frozenset({"nobody-1"})))
    assert await queued(store) == []
    assert await store.submitters_of({o["id"] for o in objs}) == {}
