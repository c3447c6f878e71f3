"""The SQLite store on a real database file: integrity rules and the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange.errors import AlreadyExists
from exchange.model import Partner, Tlp, ValidObject
from exchange.store import CommitOutcome
from exchange.store.sqlite import SqliteStore

NGO = Partner(
    "ngo-1", "Harbor Light", "non-profit", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
)
PLATFORM = Partner(
    "plat-1", "Kestrel", "technology", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"
)


def obj(
    oid: str = "indicator--6bd06048-f8e8-5524-a440-95e258a3588a",
    version: str = "2026-01-01T00:00:00.000Z",
    creator: str = NGO.identity_id,
    *,
    revoked: bool = False,
    tlp: Tlp = Tlp.GREEN,
) -> ValidObject:
    return ValidObject(
        oid, oid.split("--", maxsplit=1)[0], version, creator, tlp, b"{}", revoked=revoked
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "exchange.sqlite3")
    await s.open()
    await s.add_partner(NGO, b"n" * 32)
    await s.add_partner(PLATFORM, b"p" * 32)
    yield s
    await s.close()


async def test_versions_duplicates_and_creators(store: SqliteStore) -> None:
    first = obj()
    assert await store.commit_objects(NGO, [first, first], 1.0) == [
        CommitOutcome.INSERTED,
        CommitOutcome.DUPLICATE,  # the same id and version twice in one bundle
    ]
    # The same instant written with another precision is the same version.
    same = obj(version="2026-01-01T00:00:00Z")
    newer = obj(version="2026-02-01T00:00:00.000Z")
    assert await store.commit_objects(NGO, [same, newer], 2.0) == [
        CommitOutcome.DUPLICATE,
        CommitOutcome.INSERTED,
    ]
    hijack = obj(version="2026-03-01T00:00:00.000Z", creator=PLATFORM.identity_id)
    assert await store.commit_objects(PLATFORM, [hijack], 3.0) == [CommitOutcome.NOT_CREATOR]


async def test_revoked_objects_get_no_new_version(store: SqliteStore) -> None:
    await store.commit_objects(NGO, [obj(version="2026-02-01T00:00:00.000Z", revoked=True)], 1.0)
    assert await store.commit_objects(NGO, [obj(version="2026-03-01T00:00:00.000Z")], 2.0) == [
        CommitOutcome.REVOKED
    ]


async def test_a_partners_identity_object_belongs_to_it(store: SqliteStore) -> None:
    forged = obj(oid=NGO.identity_id, creator=PLATFORM.identity_id)
    assert await store.commit_objects(PLATFORM, [forged], 1.0) == [CommitOutcome.NOT_CREATOR]
    own = obj(oid=NGO.identity_id)
    assert await store.commit_objects(NGO, [own], 1.0) == [CommitOutcome.INSERTED]


async def test_outbox_holds_what_was_not_published(store: SqliteStore, tmp_path: Path) -> None:
    a, b = obj(), obj(oid="indicator--50b13f1c-307d-5db3-83b1-125a1e79b9ea")
    await store.commit_objects(NGO, [a, b], 1.0)
    pending = await store.pending_outbox(10)
    assert [p.obj.object_id for p in pending] == [a.object_id, b.object_id]
    assert all(p.submitter == NGO.partner_id for p in pending)
    await store.mark_published([pending[0].seq], {("green", 0): 5})
    await store.mark_published([], {("green", 0): 3})  # positions never move back
    assert [p.obj.object_id for p in await store.pending_outbox(10)] == [b.object_id]
    assert await store.relay_positions(["green", "clear"]) == {("green", 0): 5}

    # A second store on the same file (a restart) sees the same outbox.
    again = SqliteStore(tmp_path / "exchange.sqlite3")
    await again.open()
    try:
        assert [p.seq for p in await again.pending_outbox(10)] == [pending[1].seq]
    finally:
        await again.close()


async def test_partners_and_credentials(store: SqliteStore) -> None:
    assert await store.partner_for_token(b"n" * 32) == NGO
    assert await store.partner_for_token(b"x" * 32) is None
    with pytest.raises(AlreadyExists, match="STIX identity"):
        await store.add_partner(Partner("other", "Other", "non-profit", NGO.identity_id), b"o" * 32)
    assert [p.partner_id for p in await store.list_partners()] == ["ngo-1", "plat-1"]
