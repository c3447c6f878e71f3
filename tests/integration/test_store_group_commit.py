"""Group commit, on a real SQLite file and a real PostgreSQL database: concurrent
``commit_objects`` calls share store transactions (``commit_transactions`` counts
them), each call gets what it would have got alone (results, audiences, receipts,
audit entries in its own bundle order), the log verifies afterwards, and one
submission that fails is rolled back alone while the others commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from exchange_protocol import merkle

from exchange import policy
from exchange.audit.entries import Action, AuditQuery, Event
from exchange.audit.verify import verify_log
from exchange.auth import new_token_credential
from exchange.model import Audience, Partner, Rejection, Tlp, ValidObject
from exchange.store import CommitOutcome, Committed, Store
from exchange.store.sqlite import SqliteStore
from tests.postgres import STORES, PostgresServer, StoreFactory, store_factory

PARTNERS = [
    Partner(f"ngo-{n}", f"NGO {n}", f"identity--00000000-0000-4000-8000-{n:012d}")
    for n in range(16)
]
# Never registered: its objects break the foreign key to partners, in any store.
STRANGER = Partner("stranger", "Nobody", "identity--00000000-0000-4000-9000-000000000000")


def indicator(n: int, creator: Partner, version: str = "2026-01-01T00:00:00.000Z") -> ValidObject:
    oid = f"indicator--00000000-0000-4000-8000-{n:012d}"
    body = f'{{"id":"{oid}","modified":"{version}"}}'.encode()
    return ValidObject(oid, "indicator", version, creator.identity_id, Tlp.GREEN, body, index=n % 3)


def green(submitter: Partner) -> Audience:
    return Audience(Tlp.GREEN, submitter.partner_id)


# (submitter, objects, rejected): what each concurrent caller submits.
Bundle = tuple[Partner, list[tuple[ValidObject, Audience]], list[Rejection]]


def bundles() -> list[Bundle]:
    out: list[Bundle] = []
    for n, partner in enumerate(PARTNERS):
        objects = [(indicator(100 + n, partner), green(partner))]
        rejected: list[Rejection] = []
        if n % 4 == 1:
            # Two objects, one a new version, and one refused before the store.
            objects.append((indicator(200 + n, partner), green(partner)))
            rejected.append(Rejection(f"indicator--bad-{n}", "pattern", "a pattern", 2, "v"))
        if n % 4 == 2:
            # Another partner's object: refused (not its creator).
            objects.append((indicator(100, PARTNERS[0]), green(partner)))
        if n % 4 == 3:
            # The same version twice in one bundle: the second is a duplicate.
            objects.append((indicator(100 + n, partner), green(partner)))
        out.append((partner, objects, rejected))
    return out


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request, tmp_path)


@pytest.fixture
def make_other_store(
    make_store: StoreFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> StoreFactory:
    """Builds a store of the same kind over other storage (another file or database)."""
    if isinstance(make_store(), SqliteStore):
        return lambda: SqliteStore(tmp_path / "other.sqlite3")
    from exchange.store.postgres import PostgresStore  # noqa: PLC0415 (only when needed)

    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    return lambda: PostgresStore(url, pool_size=4, timeout_s=10.0)


async def opened(store: Store) -> Store:
    await store.open()
    for n, partner in enumerate(PARTNERS):
        await store.add_partner(partner, new_token_credential(partner.partner_id, now=n)[0])
    return store


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = await opened(make_store())
    try:
        yield s
    finally:
        await s.close()


def transactions(store: Store) -> int:
    count: Any = getattr(store, "commit_transactions")  # noqa: B009 - not in the protocol
    return int(count)


async def commit(store: Store, bundle: Bundle, at: float) -> list[Committed]:
    partner, objects, rejected = bundle
    return await store.commit_objects(partner, objects, at, policy.widen, rejected)


def without_receipts(results: Sequence[Committed]) -> list[tuple[CommitOutcome, Any]]:
    return [(r.outcome, r.audience) for r in results]


async def submit_events(store: Store, partner: Partner) -> list[Event]:
    entries = await store.audit_entries(
        AuditQuery(partner=partner.partner_id, action=Action.SUBMIT.value)
    )
    return [e.event for e in entries]


async def test_concurrent_commits_share_transactions_and_match_alone(
    store: Store, make_other_store: StoreFactory
) -> None:
    # The first bundle alone (the object a later one is refused for), then 16 at once.
    work = bundles()
    await commit(store, work[0], 1.0)
    before = transactions(store)
    together = await asyncio.gather(*(commit(store, b, 2.0) for b in work[1:]))
    used = transactions(store) - before
    assert 1 <= used < len(work) - 1, used

    # The same bundles, one after another, on a fresh store of the same kind.
    alone_store = await opened(make_other_store())
    try:
        await commit(alone_store, work[0], 1.0)
        alone = [await commit(alone_store, b, 2.0) for b in work[1:]]
        for (partner, _, _), got, expected in zip(work[1:], together, alone, strict=True):
            assert without_receipts(got) == without_receipts(expected)
            # The same SUBMIT entries, in the same order (their places in the log differ).
            assert await submit_events(store, partner) == await submit_events(alone_store, partner)
    finally:
        await alone_store.close()

    # Every receipt is its entry, as stored; the log verifies.
    for results in together:
        for r in results:
            if r.outcome is CommitOutcome.INSERTED:
                assert r.receipt is not None
                assert merkle.leaf_hash(r.receipt.entry) == r.receipt.leaf_hash
                (row,) = await store.audit_rows(r.receipt.log_index, 1)
                assert (row.data, row.leaf_hash) == (r.receipt.entry, r.receipt.leaf_hash)
            else:
                assert r.receipt is None
    report = await verify_log(store, None)
    assert report.intact, report.summary
    # Each submission's entries are together, in its bundle order.
    rows = await store.audit_rows(0, 1_000)
    actors = [row.actor for row in rows]
    for partner, objects, rejected in work:
        first = actors.index(partner.partner_id)
        count = len(objects) + len(rejected)
        assert actors[first : first + count] == [partner.partner_id] * count
        assert actors.count(partner.partner_id) == count


async def test_a_failing_submission_leaves_the_others_committed(store: Store) -> None:
    work = bundles()[:8]
    bad: Bundle = (STRANGER, [(indicator(999, STRANGER), green(STRANGER))], [])
    # Alone, it fails (the partner is not registered) and writes nothing.
    size = await store.audit_size()
    with pytest.raises(Exception) as alone:  # noqa: PT011 - whatever the store raises alone
        await commit(store, bad, 1.0)
    assert await store.audit_size() == size

    before = transactions(store)
    outcomes = await asyncio.gather(
        *(commit(store, b, 2.0) for b in [*work[:4], bad, *work[4:]]), return_exceptions=True
    )
    assert transactions(store) - before < len(outcomes)
    failed = outcomes.pop(4)
    assert type(failed) is type(alone.value)
    for (partner, objects, _), results in zip(work, outcomes, strict=True):
        assert not isinstance(results, BaseException), results
        assert len(results) == len(objects)
        for (obj, _), r in zip(objects, results, strict=True):
            if r.outcome is CommitOutcome.INSERTED:
                copies = await store.object_copies(obj.object_id)
                assert [c.submitter for c in copies] == [partner.partner_id]
    assert await store.object_copies(indicator(999, STRANGER).object_id) == []
    assert await submit_events(store, STRANGER) == []
    report = await verify_log(store, None)
    assert report.intact, report.summary


async def test_one_caller_alone_commits_at_once(store: Store) -> None:
    before = transactions(store)
    for n, bundle in enumerate(bundles()[:3]):
        await asyncio.wait_for(commit(store, bundle, float(n)), timeout=10)
    assert transactions(store) - before == 3
