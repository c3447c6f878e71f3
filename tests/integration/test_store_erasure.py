"""Erasure in both stores, on a real SQLite file and a real PostgreSQL database: bodies
gone from every read and from the outbox, the rows kept so that an erased version is
not taken again, one erasure per copy queued for the relay, an ERASE entry in the audit
log that still verifies, objects that refer to the erased one, and (SQLite) no copy of
the erased content left anywhere in the database's files."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange import policy
from exchange.audit.entries import OPERATOR, Action, AuditQuery
from exchange.audit.verify import verify_log
from exchange.auth import new_token_credential
from exchange.model import Audience, EraseReason, Partner, Tlp, ValidObject, version_key
from exchange.store import CommitOutcome, PublishedQuery, Store
from exchange.store.sqlite import SqliteStore
from tests.postgres import STORES, StoreFactory, store_factory

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner("plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7")
INDICATOR = "indicator--6bd06048-f8e8-5524-a440-95e258a3588a"
SIGHTING = "sighting--50b13f1c-307d-5db3-83b1-125a1e79b9ea"
# An observable (SCO): each partner that submits one holds a copy of its own.
PHONE = "email-addr--5c6c0e3a-8a0c-5f8b-9d5c-4b2f7d1c2e10"
# What the erased object said: nothing of it may stay anywhere.
SECRET = "+15550199-ERASE-ME-7Q"
V1, V2, V3 = "2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z"


def indicator(version: str = V1, oid: str = INDICATOR) -> ValidObject:
    body = f'{{"id":"{oid}","modified":"{version}","pattern":"[x:value = \'{SECRET}\']"}}'
    return ValidObject(oid, "indicator", version, NGO.identity_id, Tlp.AMBER, body.encode())


def sighting() -> ValidObject:
    body = f'{{"id":"{SIGHTING}","modified":"{V1}","sighting_of_ref":"{INDICATOR}"}}'
    return ValidObject(
        SIGHTING,
        "sighting",
        V1,
        PLATFORM.identity_id,
        Tlp.AMBER,
        body.encode(),
        refers_to=INDICATOR,
    )


RELATIONSHIP = "relationship--7d2a4c1e-0f3b-4e8a-9c61-5b1d2e3f4a50"
REPORT = "report--1e9c7b3a-6d2f-4a8e-b5c4-0a9f8e7d6c51"


def referring() -> list[ValidObject]:
    """A relationship from the indicator, and a report listing it among others."""
    rel = (
        f'{{"id":"{RELATIONSHIP}","modified":"{V1}","source_ref":"{INDICATOR}",'
        f'"target_ref":"{SIGHTING}"}}'
    )
    report = f'{{"id":"{REPORT}","modified":"{V1}","object_refs":["{SIGHTING}","{INDICATOR}"]}}'
    return [
        ValidObject(
            RELATIONSHIP, "relationship", V1, PLATFORM.identity_id, Tlp.AMBER, rel.encode()
        ),
        ValidObject(REPORT, "report", V1, PLATFORM.identity_id, Tlp.AMBER, report.encode()),
    ]


def observable(submitter: Partner) -> ValidObject:
    body = f'{{"id":"{PHONE}","value":"{SECRET}"}}'.encode()
    return ValidObject(PHONE, "email-addr", "", submitter.identity_id, Tlp.GREEN, body)


async def commit(store: Store, submitter: Partner, *objects: ValidObject) -> list[CommitOutcome]:
    pairs = [(o, Audience(o.tlp, submitter.partner_id)) for o in objects]
    done = await store.commit_objects(submitter, pairs, 1.0, policy.widen)
    return [c.outcome for c in done]


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request, tmp_path)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    try:
        for partner in (NGO, PLATFORM):
            await s.add_partner(partner, new_token_credential(partner.partner_id, now=1.0)[0])
        yield s
    finally:
        await s.close()


async def test_erasure_removes_every_version_and_keeps_the_proofs(store: Store) -> None:
    assert await commit(store, NGO, indicator(V1), indicator(V2)) == [CommitOutcome.INSERTED] * 2
    assert await commit(store, PLATFORM, sighting()) == [CommitOutcome.INSERTED]
    assert await commit(store, PLATFORM, *referring()) == [CommitOutcome.INSERTED] * 2
    wakes: list[int] = []
    store.on_outbox(lambda: wakes.append(1))

    [erasure] = await store.erase_object(
        INDICATOR, by=NGO.partner_id, reason=EraseReason.VICTIM_DATA, at=5.0, copy_of=NGO.partner_id
    )

    assert wakes, "the relay is woken to publish the erasure"
    assert (erasure.object_id, erasure.submitter, erasure.erased_by) == (
        INDICATOR,
        NGO.partner_id,
        NGO.partner_id,
    )
    assert [v.version for v in erasure.versions] == [V1, V2]
    assert erasure.reason is EraseReason.VICTIM_DATA
    # Newest first: what refers to it by sighting_of_ref, source_ref or object_refs.
    assert [oid for oid, _ in erasure.referenced_by] == [REPORT, RELATIONSHIP, SIGHTING]
    # Gone from every read: look-ups, pages, the outbox.
    assert await store.object_copies(INDICATOR) == []
    assert await store.object_copies(INDICATOR, V1) == []
    assert all(
        s.obj.object_id != INDICATOR
        for s in await store.published_objects(PublishedQuery(-1, 100, versions=("all",)))
    )
    assert all(s.obj.object_id != INDICATOR for s in await store.pending_outbox(100))
    # Queued once for the relay, with its audit entry.
    assert [e.erasure_id for e in await store.pending_erasures(10)] == [erasure.erasure_id]
    assert await store.erasures_of(INDICATOR) == [erasure]
    assert await store.erasure(erasure.erasure_id) == erasure
    await store.mark_erasures_published([erasure.erasure_id], {("green", 0): 7})
    assert await store.pending_erasures(10) == []
    assert (await store.relay_positions(["green"]))[("green", 0)] == 7
    assert await store.erased_copies(0) == [
        (erasure.erasure_id, INDICATOR, NGO.partner_id, version_key(V2))
    ]
    assert await store.erased_copies(erasure.erasure_id) == []
    [entry] = await store.audit_entries(AuditQuery(action=Action.ERASE.value))
    assert entry.index == erasure.audit_index
    assert entry.event.detail == {"reason": "victim-data"}
    assert [listed[1] for listed in entry.event.objects] == [V1, V2]
    assert SECRET.encode() not in entry.data
    # The log still verifies: entries hold digests, and the digests were not touched.
    report = await verify_log(store, None)
    assert report.intact, report.problem
    assert report.entries_checked == await store.audit_size()

    # Erasing again erases nothing more.
    assert (
        await store.erase_object(
            INDICATOR, by=NGO.partner_id, reason=EraseReason.OTHER, at=6.0, copy_of=NGO.partner_id
        )
        == []
    )


async def test_an_erased_version_is_not_taken_again_but_a_newer_one_is(store: Store) -> None:
    await commit(store, NGO, indicator(V1), indicator(V2))
    await store.erase_object(
        INDICATOR, by=OPERATOR, reason=EraseReason.COURT_ORDER, at=5.0, copy_of=None
    )
    # A replay (the same versions, or an older one) is refused, not "duplicate".
    assert await commit(store, NGO, indicator(V2), indicator(V1)) == [CommitOutcome.ERASED] * 2
    # Its creator may publish a new version; only that one is then held.
    assert await commit(store, NGO, indicator(V3)) == [CommitOutcome.INSERTED]
    [copy] = await store.object_copies(INDICATOR)
    assert copy.obj.version == V3
    # Nobody else may, erased or not.
    stolen = ValidObject(
        INDICATOR, "indicator", "2026-02-01T00:00:00.000Z", PLATFORM.identity_id, Tlp.GREEN, b"{}"
    )
    assert await commit(store, PLATFORM, stolen) == [CommitOutcome.NOT_CREATOR]


async def test_a_partner_erases_its_own_copy_of_an_observable_only(store: Store) -> None:
    assert await commit(store, NGO, observable(NGO)) == [CommitOutcome.INSERTED]
    assert await commit(store, PLATFORM, observable(PLATFORM)) == [CommitOutcome.INSERTED]

    # The platform holds no copy of the NGO's indicator: nothing of it is erased.
    await commit(store, NGO, indicator())
    assert (
        await store.erase_object(
            INDICATOR,
            by=PLATFORM.partner_id,
            reason=EraseReason.OTHER,
            at=5.0,
            copy_of=PLATFORM.partner_id,
        )
        == []
    )
    [erasure] = await store.erase_object(
        PHONE, by=NGO.partner_id, reason=EraseReason.VICTIM_DATA, at=5.0, copy_of=NGO.partner_id
    )
    assert erasure.submitter == NGO.partner_id
    assert [c.submitter for c in await store.object_copies(PHONE)] == [PLATFORM.partner_id]
    assert await commit(store, NGO, observable(NGO)) == [CommitOutcome.ERASED]
    # The operator erases every copy left.
    erased = await store.erase_object(
        PHONE, by=OPERATOR, reason=EraseReason.DATA_SUBJECT_REQUEST, at=6.0, copy_of=None
    )
    assert [e.submitter for e in erased] == [PLATFORM.partner_id]
    assert await store.object_copies(PHONE) == []
    assert [e.submitter for e in await store.erasures_of(PHONE)] == [
        NGO.partner_id,
        PLATFORM.partner_id,
    ]
    # Erased from every copy by the operator: nobody's copy comes back, not even that of
    # a partner that never held one (a court order is about the value).
    third = Partner("hotline-2", "Lantern", "identity--0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")
    await store.add_partner(third, new_token_credential(third.partner_id, now=1.0)[0])
    assert await commit(store, third, observable(third)) == [CommitOutcome.ERASED]
    assert await commit(store, PLATFORM, observable(PLATFORM)) == [CommitOutcome.ERASED]


async def test_a_partners_erasure_of_its_copy_leaves_others_free_to_share(store: Store) -> None:
    await commit(store, NGO, observable(NGO))
    await store.erase_object(
        PHONE, by=NGO.partner_id, reason=EraseReason.INACCURATE, at=5.0, copy_of=NGO.partner_id
    )
    assert await commit(store, PLATFORM, observable(PLATFORM)) == [CommitOutcome.INSERTED]


async def test_no_copy_of_erased_content_stays_in_the_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "exchange.sqlite3"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
        # Enough versions that the bodies fill pages of their own.
        versions = [f"2026-01-01T00:00:{n:02d}.000Z" for n in range(50)]
        await commit(store, NGO, *(indicator(v) for v in versions))
        await commit(store, NGO, observable(NGO))
        await store.erase_object(
            INDICATOR,
            by=NGO.partner_id,
            reason=EraseReason.VICTIM_DATA,
            at=5.0,
            copy_of=NGO.partner_id,
        )
        await store.erase_object(
            PHONE,
            by=NGO.partner_id,
            reason=EraseReason.VICTIM_DATA,
            at=5.0,
            copy_of=NGO.partner_id,
        )
        # While the store is open (as while the server runs): the database, its WAL.
        assert holding(tmp_path, SECRET.encode()) == []
    finally:
        await store.close()
    assert holding(tmp_path, SECRET.encode()) == []


def holding(directory: Path, needle: bytes) -> list[str]:
    """The names of the SQLite files in ``directory`` whose bytes hold ``needle``."""
    files = sorted(directory.glob("exchange.sqlite3*"))
    assert files
    return [f.name for f in files if needle in f.read_bytes()]


async def test_a_guarded_erasure_keeps_a_copy_given_a_new_version(store: Store) -> None:
    await commit(store, NGO, indicator(V1))
    [seen] = await store.object_copies(INDICATOR)
    await commit(store, NGO, indicator(V2))  # after the caller looked
    assert (
        await store.erase_object(
            INDICATOR,
            by=OPERATOR,
            reason=EraseReason.RETENTION,
            at=5.0,
            copy_of=NGO.partner_id,
            latest_seq=seen.seq,
        )
        == []
    )
    [latest] = await store.object_copies(INDICATOR)
    assert latest.obj.version == V2
    [erasure] = await store.erase_object(
        INDICATOR,
        by=OPERATOR,
        reason=EraseReason.RETENTION,
        at=6.0,
        copy_of=NGO.partner_id,
        latest_seq=latest.seq,
    )
    assert [v.version for v in erasure.versions] == [V1, V2]


async def test_a_reader_holding_the_log_delays_no_one_and_the_log_is_cleared_after(
    tmp_path: Path,
) -> None:
    """An operator's sqlite3 shell or a backup holding an old snapshot keeps the WAL
    from being truncated: erasures and submissions go on (the truncation does not wait
    for it), and the erased bytes leave the WAL once the reader lets go."""
    path = tmp_path / "exchange.sqlite3"
    store = SqliteStore(path)
    await store.open()
    reader = sqlite3.connect(path)
    try:
        await store.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
        await commit(store, NGO, *(indicator(f"2026-01-01T00:00:{n:02d}.000Z") for n in range(20)))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM objects").fetchone()
        async with asyncio.timeout(10):  # a deadline, far above a normal erasure
            await store.erase_object(
                INDICATOR, by=OPERATOR, reason=EraseReason.COURT_ORDER, at=5.0, copy_of=None
            )
            assert await commit(store, NGO, sighting()) == [CommitOutcome.INSERTED]
        reader.rollback()
        async with asyncio.timeout(20):
            while holding(tmp_path, SECRET.encode()):  # noqa: ASYNC110 (files: no event)
                await asyncio.sleep(0.1)
    finally:
        reader.close()
        await store.close()
