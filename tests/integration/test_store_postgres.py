"""What only the PostgreSQL store does, on a real server (tests/postgres.py): several
processes on one database (migrations, one audit chain, sequence numbers in commit
order, leases, unique checks that race), a database that goes away and comes back,
and text it cannot store. Each PostgresStore instance stands for one server process.

The behaviour both stores share is tested on both in test_store.py and
test_audit_store.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from exchange import policy
from exchange.audit.entries import Action, Event
from exchange.audit.verify import verify_log
from exchange.auth import new_token_credential
from exchange.config import mask_url
from exchange.errors import AlreadyExists, InvalidArgument, Unavailable
from exchange.model import Audience, Community, Credential, Partner, Rejection, Tlp, ValidObject
from exchange.store import CommitOutcome, Committed
from exchange.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore, lease_key
from exchange.store.postgres._connection import _LEASE_CLASS
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner("plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7")


def indicator(n: int, *, creator: Partner = NGO, index: int = 0) -> ValidObject:
    oid = f"indicator--00000000-0000-4000-8000-{n:012d}"
    version = "2026-01-01T00:00:00.000Z"
    body = f'{{"id":"{oid}","modified":"{version}"}}'.encode()
    return ValidObject(oid, "indicator", version, creator.identity_id, Tlp.GREEN, body, index=index)


def green(submitter: Partner) -> Audience:
    return Audience(Tlp.GREEN, submitter.partner_id)


def replace_version(obj: ValidObject, version: str) -> ValidObject:
    body = f'{{"id":"{obj.object_id}","modified":"{version}"}}'.encode()
    return replace(obj, version=version, body=body)


# An observable (SCO): each partner that submits it holds a copy of its own.
EMAIL = "email-addr--5c6c0e3a-8a0c-5f8b-9d5c-4b2f7d1c2e10"


def observable(submitter: Partner) -> ValidObject:
    version = "2026-01-01T00:00:00.000Z"
    body = f'{{"id":"{EMAIL}","value":"recruiter@example.com"}}'.encode()
    return ValidObject(EMAIL, "email-addr", version, submitter.identity_id, Tlp.GREEN, body)


@contextlib.asynccontextmanager
async def opened(url: str, count: int = 1, **options: Any) -> AsyncIterator[list[PostgresStore]]:
    """``count`` stores on ``url`` (as many server processes), opened together."""
    stores = [PostgresStore(url, **options) for _ in range(count)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        yield stores
    finally:
        for s in stores:
            await s.close()


async def registered(url: str) -> None:
    async with opened(url) as [store]:
        await store.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
        await store.add_partner(PLATFORM, new_token_credential(PLATFORM.partner_id, now=2.0)[0])


async def fetch(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of ``sql``, on a connection of its own (what an operator sees in psql)."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- migrations ---------------------------------------------------------------------------


async def test_migrating_twice_changes_nothing(postgres_url: str) -> None:
    assert await PostgresStore(postgres_url).migrate() == (0, SCHEMA_VERSION)
    versions = await fetch(postgres_url, "SELECT version, summary FROM schema_version")
    assert versions == [(m.version, m.summary) for m in MIGRATIONS]
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    before = sorted(await fetch(postgres_url, tables))
    assert await PostgresStore(postgres_url).migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    async with opened(postgres_url) as [store]:
        assert await store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        assert await store.registry_version() == 0
        assert await store.audit_size() == 0
    assert await fetch(postgres_url, "SELECT version, summary FROM schema_version") == versions
    assert sorted(await fetch(postgres_url, tables)) == before

    async def none_left() -> bool:
        """migrate() and close() keep no connection open."""
        left = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'exchange%'"
        )
        return await fetch(postgres_url, left) == [(0,)]

    assert await eventually(none_left)


async def test_replicas_that_start_together_migrate_once(postgres_url: str) -> None:
    async with opened(postgres_url, 4) as stores:
        await asyncio.gather(*(s.ping() for s in stores))
    assert await fetch(postgres_url, "SELECT version FROM schema_version ORDER BY 1") == [
        (m.version,) for m in MIGRATIONS
    ]


async def test_a_version_1_database_migrates_with_its_data_intact(postgres_url: str) -> None:
    """The first schema, as a release with it left a database: partners, two versions
    of an indicator (one still in the outbox), an observable; then version 2, where
    several partners may each hold a copy of an observable."""
    conn = await asyncpg.connect(postgres_url)
    try:
        async with conn.transaction():
            await conn.execute(MIGRATIONS[0].sql)
            await conn.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY,"
                " summary text NOT NULL, applied_at double precision NOT NULL)"
            )
            await conn.execute(
                "INSERT INTO schema_version VALUES (1, $1, 0)", MIGRATIONS[0].summary
            )
            for n, partner in enumerate((NGO, PLATFORM)):
                await conn.execute(
                    "INSERT INTO partners (partner_id, name, identity_id, kind, sectors, roles,"
                    " default_tlp, disabled, created_at)"
                    " VALUES ($1, $2, $3, 'ngo', '{}', '{submit,subscribe}', 'green', false, $4)",
                    partner.partner_id,
                    partner.name,
                    partner.identity_id,
                    float(n),
                )
            rows = [
                (indicator(1), "2026-01-01T00:00:00.000000000Z", NGO),
                (replace_version(indicator(1), "2026-02-01T00:00:00.000Z"),
                 "2026-02-01T00:00:00.000000000Z", NGO),
                (observable(PLATFORM), "2026-01-01T00:00:00.000000000Z", PLATFORM),
            ]  # fmt: skip
            for o, key, submitter in rows:
                await conn.execute(
                    "INSERT INTO objects (object_id, version, version_key, object_type,"
                    " created_by_ref, submitter, tlp, labels, revoked, spec_version,"
                    " accepted_at, body, audience) VALUES"
                    " ($1, $2, $3, $4, $5, $6, 'green', '{}', false, '2.1', 1.0, $7, $8)",
                    o.object_id,
                    o.version,
                    key,
                    o.object_type,
                    o.created_by_ref,
                    submitter.partner_id,
                    o.body,
                    green(submitter).to_json().decode(),
                )
            await conn.execute("INSERT INTO outbox (seq) VALUES (2)")
    finally:
        await conn.close()

    assert await PostgresStore(postgres_url).migrate() == (1, SCHEMA_VERSION)
    async with opened(postgres_url) as [store]:
        assert [p.partner_id for p in await store.list_partners()] == ["ngo-1", "plat-1"]
        [pending] = await store.pending_outbox(10)
        assert pending.seq == 2 and pending.obj.version == "2026-02-01T00:00:00.000Z"
        [latest] = await store.object_copies(indicator(1).object_id)
        newer = replace_version(indicator(1), "2026-02-01T00:00:00.000Z")
        assert latest.seq == 2 and latest.obj.body == newer.body
        assert await store.submitters_of([EMAIL, indicator(1).object_id]) == {
            EMAIL: frozenset({"plat-1"}),
            indicator(1).object_id: frozenset({"ngo-1"}),
        }
        # Version 2 at work: another partner's copy of the observable, sequence
        # numbers after the migrated ones, the creator rule kept for the indicator.
        [mine] = await store.commit_objects(NGO, [(observable(NGO), green(NGO))], 2.0, policy.widen)
        assert mine.outcome is CommitOutcome.INSERTED
        [theirs] = await store.commit_objects(
            PLATFORM, [(replace_version(indicator(1, creator=PLATFORM), "2026-03-01T00:00:00Z"),
                        green(PLATFORM))], 2.0, policy.widen,
        )  # fmt: skip
        assert theirs.outcome is CommitOutcome.NOT_CREATOR
        assert [p.seq for p in await store.pending_outbox(10)] == [2, 4]
        await store.mark_published([4], {}, set_aside={2: "too large"})
        assert [(r.seq, r.reason) for r in await store.set_aside_rows()] == [(2, "too large")]
    constraints = await fetch(
        postgres_url,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'objects'::regclass AND contype = 'u'",
    )
    assert constraints == [("objects_object_id_created_by_ref_version_key_key",)]


async def test_a_database_of_a_newer_release_is_refused(postgres_url: str) -> None:
    await PostgresStore(postgres_url).migrate()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "INSERT INTO schema_version VALUES ($1, 'from the future', 0)", SCHEMA_VERSION + 1
        )
    finally:
        await conn.close()
    newer = f"schema version {SCHEMA_VERSION + 1}, written by a newer release.*upgrade"
    store = PostgresStore(postgres_url)
    with pytest.raises(Unavailable, match=newer):
        await store.open()
    with pytest.raises(Unavailable, match=newer):
        await store.migrate()
    await store.close()


# -- several processes, one database --------------------------------------------------------


async def test_concurrent_writers_keep_one_chain_and_sequences_in_commit_order(
    postgres_url: str,
) -> None:
    await registered(postgres_url)
    async with opened(postgres_url, 2, pool_size=6) as [a, b]:
        seen: list[int] = []  # the outbox sequence numbers, in the order they appeared
        seen_set: set[int] = set()
        out_of_order: list[tuple[int, int]] = []
        done = asyncio.Event()

        async def tail() -> None:
            """What a relay sees: a newly visible row must come after every row seen."""
            while True:
                last = done.is_set()  # then this read starts after the last commit
                visible = [p.seq for p in await a.pending_outbox(100_000)]
                new = [s for s in visible if s not in seen_set]
                if seen and new and min(new) < max(seen):
                    out_of_order.append((min(new), max(seen)))
                seen.extend(sorted(new))
                seen_set.update(new)
                if last:
                    return
                await asyncio.sleep(0)

        async def submit(store: PostgresStore, n: int) -> list[Committed]:
            submitter = NGO if n % 2 else PLATFORM
            objects = [(indicator(n * 10 + i, creator=submitter), green(submitter)) for i in (0, 1)]
            refused = [Rejection(f"indicator--bad-{n}", "pattern", "a STIX pattern", 2)]
            return await store.commit_objects(submitter, objects, 1.0, policy.widen, refused)

        async def append(store: PostgresStore, n: int) -> None:
            await store.append_audit(
                [Event(Action.LOOKUP, "plat-1", 1_000.0 + n, object_id=f"x-{n}")] * 2
            )

        tailer = asyncio.create_task(tail())
        work: list[Awaitable[object]] = []
        for n in range(60):
            store = a if n % 2 else b
            work += [submit(store, n), append(store, n)]
        results = await asyncio.gather(*work)
        done.set()
        await tailer

        commits = [r for r in results if isinstance(r, list)]
        assert all(c.outcome is CommitOutcome.INSERTED for r in commits for c in r)
        # 60 bundles of 3 SUBMIT entries and 60 appends of 2 entries, in one chain.
        assert await a.audit_size() == await b.audit_size() == 60 * 3 + 60 * 2
        report = await verify_log(b, None)
        assert report.intact, report.summary
        assert report.entries_checked == 300
        assert await fetch(postgres_url, "SELECT size FROM audit_head") == [(300,)]

        # Sequence numbers follow commit order: sorted by their SUBMIT entries (taken
        # under the same lock as the numbers), the numbers increase too.
        seqs = {p.obj.object_id: p.seq for p in await a.pending_outbox(1000)}
        assert len(seqs) == 120
        by_entry = sorted(
            (c.receipt.log_index, seqs[Event.decode(c.receipt.entry)[2].object_id])
            for r in commits
            for c in r
            if c.receipt is not None
        )
        in_entry_order = [seq for _, seq in by_entry]
        assert in_entry_order == sorted(in_entry_order)
        # ...so a reader never saw a row appear behind one it had seen already.
        assert out_of_order == []
        assert sorted(seen) == sorted(seqs.values())


async def test_a_bundle_races_another_process_for_the_same_object(postgres_url: str) -> None:
    """Two processes submit the same object at once: one stores it, the other finds
    it held (the creator and duplicate checks run under the audit head lock)."""
    await registered(postgres_url)
    async with opened(postgres_url, 2) as [a, b]:
        for n in range(10):
            bundle = [(indicator(n), green(NGO))]
            first, second = await asyncio.gather(
                a.commit_objects(NGO, bundle, 1.0, policy.widen),
                b.commit_objects(NGO, bundle, 1.0, policy.widen),
            )
            assert sorted(c.outcome for c in first + second) == [
                CommitOutcome.DUPLICATE,
                CommitOutcome.INSERTED,
            ]
        assert len(await a.pending_outbox(100)) == 10


async def test_one_partners_copy_of_an_observable_is_stored_once_however_it_races(
    postgres_url: str,
) -> None:
    """Defect 10 on several processes: the same observable from the same partner at
    once is one row (the other finds it held); from two partners, two copies."""
    await registered(postgres_url)
    async with opened(postgres_url, 2) as [a, b]:
        for partner in (NGO, PLATFORM):
            bundle = [(observable(partner), green(partner))]
            first, second = await asyncio.gather(
                a.commit_objects(partner, bundle, 1.0, policy.widen),
                b.commit_objects(partner, bundle, 1.0, policy.widen),
            )
            assert sorted(c.outcome for c in first + second) == [
                CommitOutcome.DUPLICATE,
                CommitOutcome.INSERTED,
            ]
        copies = await a.object_copies(EMAIL)
        assert [c.submitter for c in copies] == ["ngo-1", "plat-1"]
        rows = await fetch(postgres_url, "SELECT submitter FROM objects ORDER BY seq")
        assert rows == [("ngo-1",), ("plat-1",)]


async def test_registrations_that_race_get_the_usual_errors(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as [a, b]:
        for n in range(10):
            partner = Partner(f"p-{n}", "Partner", f"identity--{n}")
            token, _ = new_token_credential(partner.partner_id)
            outcomes = await asyncio.gather(
                a.add_partner(partner, token),
                b.add_partner(partner, token),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if o is not None]
            assert len(errors) == 1 and isinstance(errors[0], AlreadyExists), outcomes
            assert "partner id already registered" in errors[0].message

            community = Community(f"c-{n}")
            outcomes = await asyncio.gather(
                a.add_community(community), b.add_community(community), return_exceptions=True
            )
            errors = [o for o in outcomes if o is not None]
            assert len(errors) == 1 and isinstance(errors[0], AlreadyExists), outcomes
            assert f"community c-{n} already exists" in errors[0].message
        assert len(await b.list_partners()) == 10
        assert await a.registry_version() == 20


# -- leases ---------------------------------------------------------------------------------


async def test_one_process_holds_a_lease_until_it_closes(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as [a, b]:
        assert await a.hold_lease("relay")
        assert not await b.hold_lease("relay")
        assert await b.hold_lease("audit-mirror")  # another job, another lease
        assert not await a.hold_lease("audit-mirror")
        assert await a.hold_lease("relay")  # asking again keeps it
        assert not await b.hold_lease("relay")
        # Visible to operators: a session advisory lock per lease.
        locks = await fetch(
            postgres_url,
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
            " AND objsubid = 2 AND granted",
            _LEASE_CLASS,
        )
        keys = {lease_key("relay") & 0xFFFFFFFF, lease_key("audit-mirror") & 0xFFFFFFFF}
        assert {int(str(objid)) for (objid,) in locks} == keys

        await a.close()  # the process exits: its lease goes to the next that asks
        assert await eventually(lambda: b.hold_lease("relay"))
        assert await b.hold_lease("audit-mirror")


async def test_a_lease_is_lost_with_its_connection(postgres_url: str) -> None:
    async with opened(postgres_url, 2) as [a, b]:
        assert await a.hold_lease("relay")
        # The database ends the connection that holds a's lease (a failover, an operator).
        await fetch(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'exchange-leases'",
        )
        assert await eventually(lambda: b.hold_lease("relay"))
        assert not await a.hold_lease("relay")  # a is told, and b has it now
        assert not await a.hold_lease("relay")
        await b.close()
        assert await eventually(lambda: a.hold_lease("relay"))  # a new connection


def test_lease_keys_are_fixed() -> None:
    """Every process derives the same lock from a job's name, and so must every
    release: replicas of two releases run side by side during a rolling upgrade."""
    assert (_LEASE_CLASS, lease_key("relay")) == (2_020_373_349, 1_747_958_498)
    assert lease_key("audit-mirror") == -1_105_185_395


# -- a database that goes away ----------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of their own for the tests that stop it (the session's stays up)."""
    with PostgresServer() as server:
        yield server


async def all_calls_fail(store: PostgresStore, within_s: float) -> None:
    """Every kind of call fails with Unavailable, each within ``within_s``."""
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("ping", store.ping),
        ("get_partner", lambda: store.get_partner(NGO.partner_id)),
        ("registry_version", store.registry_version),
        ("add_community", lambda: store.add_community(Community("while-down"))),
        ("commit_objects", lambda: store.commit_objects(NGO, [(indicator(99), green(NGO))],
                                                        1.0, policy.widen)),
        ("append_audit", lambda: store.append_audit([Event(Action.LOOKUP, "plat-1", 1.0)])),
        ("audit_size", store.audit_size),
        ("pending_outbox", lambda: store.pending_outbox(10)),
        ("mark_published", lambda: store.mark_published([1], {("green", 0): 1})),
        ("hold_lease", lambda: store.hold_lease("audit-mirror")),
    ]  # fmt: skip
    for name, call in calls:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="cannot reach the PostgreSQL database") as caught:
            await call()
        assert time.monotonic() - started < within_s, name
        assert "127.0.0.1" in caught.value.message


async def test_calls_fail_while_the_database_is_down_and_work_when_it_is_back(
    own_server: PostgresServer,
) -> None:
    url = own_server.create_database()
    await registered(url)
    async with opened(url, timeout_s=2.0) as [store]:
        [done] = await store.commit_objects(NGO, [(indicator(1), green(NGO))], 1.0, policy.widen)
        assert done.outcome is CommitOutcome.INSERTED
        assert await store.hold_lease("relay")

        own_server.stop()
        try:
            # The lease went with its connection; then nothing can be reached.
            assert not await store.hold_lease("relay")
            await all_calls_fail(store, within_s=3.0)
        finally:
            own_server.start()
        # The same store object, not reopened.
        await store.ping()
        [done] = await store.commit_objects(NGO, [(indicator(2), green(NGO))], 2.0, policy.widen)
        assert done.outcome is CommitOutcome.INSERTED
        assert [p.obj.object_id for p in await store.pending_outbox(10)] == [
            indicator(1).object_id,
            indicator(2).object_id,
        ]
        assert (await verify_log(store, None)).intact
        assert await store.hold_lease("relay")

        # Restarted between two calls: the pool's connections were closed under it,
        # and the next call goes through on new ones.
        own_server.restart()
        assert await store.get_partner(NGO.partner_id) is not None
        await store.append_audit([Event(Action.LOOKUP, "plat-1", 3.0)])
        assert await store.audit_size() == 3


async def test_a_database_that_does_not_answer_times_out(own_server: PostgresServer) -> None:
    url = own_server.create_database()
    await registered(url)
    async with opened(url, timeout_s=0.5) as [store]:
        await store.ping()
        assert await store.hold_lease("relay")
        own_server.pause()  # connections stay open; nothing answers on them
        try:
            # A statement waits timeout_s, then for its cancellation as long again.
            await all_calls_fail(store, within_s=3.0)
        finally:
            own_server.resume()
        await store.ping()
        await store.append_audit([Event(Action.LOOKUP, "plat-1", 1.0)])
        assert await store.audit_size() == 1
        assert await eventually(lambda: store.hold_lease("relay"))


async def test_opening_an_unreachable_database_fails_promptly() -> None:
    # Nothing listens on this port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    store = PostgresStore(f"postgresql://exchange@127.0.0.1:{closed}/exchange", timeout_s=2.0)
    with pytest.raises(
        Unavailable, match=r"cannot reach the PostgreSQL database .*(refused|failed)"
    ):
        await store.open()
    with pytest.raises(Unavailable, match="cannot reach"):
        await store.migrate()
    with pytest.raises(Unavailable, match="not open"):
        await store.ping()
    await store.close()

    # Something accepts connections there, and never answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        store = PostgresStore(f"postgresql://exchange@127.0.0.1:{port}/exchange", timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"no answer within 0\.5 s"):
            await store.open()
        assert time.monotonic() - started < 2.0
        await store.close()


# -- text PostgreSQL cannot store ---------------------------------------------------------


async def test_a_nul_character_is_refused_naming_where_never_an_internal_error(
    postgres_url: str,
) -> None:
    """Defect 13, in depth: PostgreSQL cannot store U+0000 in text. Whatever call
    carries one is refused with InvalidArgument saying what held it (the database's
    own error, a DataError, would reach the caller as INTERNAL), and nothing of it is
    stored; looking up a key that holds one finds nothing, as on SQLite."""
    await registered(postgres_url)
    async with opened(postgres_url) as [store]:
        version = await store.registry_version()
        with pytest.raises(InvalidArgument) as refused:
            await store.add_community(Community("gulf", "hotlines\x00and shelters"))
        assert refused.value.message == (
            "the community's name, description or members holds a NUL character (U+0000),"
            " which the database cannot store: remove it; nothing of this call was stored"
        )
        token, _ = new_token_credential("p-\x00")
        with pytest.raises(InvalidArgument, match="the new partner's id, name, identity"):
            await store.add_partner(Partner("p-\x00", "Nul", "identity--nul"), token)
        assert await store.registry_version() == version
        assert await store.list_communities() == []

        # An audit event spells a NUL out (audit.entries.Event): the store never sees one,
        # so no entry can be refused and hold up the ones after it.
        size = await store.audit_size()
        events = [Event(Action.LOOKUP, "plat-1", 1.0, object_id="indicator--\x00")]
        [entry] = await store.append_audit(events)
        assert entry.event.object_id == "indicator--\\u0000"
        assert await store.audit_size() == size + 1

        assert await store.get_partner("ngo-1\x00") is None
        assert await store.list_credentials("ngo-1\x00") == []
        certificate = Credential("crt_\x00", "ngo-1", token.kind, b"d" * 32, 1.0)
        with pytest.raises(InvalidArgument, match="the token's id or partner id holds a NUL"):
            await store.add_credential(certificate)


# -- passwords ------------------------------------------------------------------------------


def test_urls_in_messages_have_no_password() -> None:
    assert (
        mask_url("postgresql://exchange:s3cr%40t@db.internal:5432/exchange")
        == "postgresql://exchange:***@db.internal:5432/exchange"
    )
    assert (
        mask_url("postgresql://db/x?sslmode=verify-full&password=s3cret&user=exchange")
        == "postgresql://db/x?sslmode=verify-full&password=***&user=exchange"
    )
    assert mask_url("postgresql://:pw@db/x") == "postgresql://:***@db/x"
    assert mask_url("postgresql://exchange@db/x") == "postgresql://exchange@db/x"
    assert "s3cret" not in mask_url("host=db user=exchange password=s3cret")


async def test_no_password_in_errors(postgres: PostgresServer) -> None:
    password = "hunter2-Pa55"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    urls = [
        # Nothing listens there.
        f"postgresql://exchange:{password}@127.0.0.1:{closed}/exchange",
        # The server answers: no such database.
        postgres.url("no_such_database", password=password),
        f"postgresql://127.0.0.1:{postgres.port}/no_such_database?user=exchange&password={password}",
    ]
    for url in urls:
        store = PostgresStore(url, timeout_s=2.0)
        assert password not in repr(store)
        for call in (store.open, store.migrate, lambda s=store: s.hold_lease("relay")):
            with pytest.raises(Unavailable) as caught:
                await call()
            shown = "".join(traceback.format_exception(caught.value))
            assert password not in shown
            assert "cannot reach the PostgreSQL database" in shown or "not open" in shown
        await store.close()
