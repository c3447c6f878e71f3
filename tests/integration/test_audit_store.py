"""The audit log in both stores, on a real SQLite file and a real PostgreSQL
database: appending (each entry committing to the one before), queries and paging,
the SUBMIT entries that ``commit_objects`` writes in the transaction of the objects,
receipts, checkpoints and proofs (``AuditLog``), and the signing key (``Signer``)."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from exchange_protocol import merkle
from exchange_protocol.checkpoint import Checkpoint

from exchange import policy
from exchange.audit.entries import OPERATOR, Action, AuditQuery, Event
from exchange.audit.log import AuditLog
from exchange.audit.signer import Signer
from exchange.audit.verify import verify_log
from exchange.auth import new_token_credential
from exchange.errors import InvalidArgument, Unavailable
from exchange.model import Audience, ObjectOutcome, Partner, Rejection, Tlp, ValidObject
from exchange.store import CommitOutcome, SignedCheckpoint, Store
from exchange.store.sqlite import SqliteStore
from tests.postgres import STORES, StoreFactory, store_factory

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner("plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7")
ORIGIN = "exchange.test"


def indicator(
    n: int,
    version: str = "2026-01-01T00:00:00.000Z",
    *,
    creator: str = NGO.identity_id,
    index: int = 0,
    revoked: bool = False,
) -> ValidObject:
    oid = f"indicator--00000000-0000-4000-8000-{n:012d}"
    body = f'{{"id":"{oid}","modified":"{version}"}}'.encode()
    return ValidObject(
        oid, "indicator", version, creator, Tlp.GREEN, body, index=index, revoked=revoked
    )


def green(submitter: Partner = NGO) -> Audience:
    return Audience(Tlp.GREEN, submitter.partner_id)


def event(
    n: int,
    action: Action = Action.LOOKUP,
    actor: str = "plat-1",
    *,
    partner: str = "",
    object_id: str = "",
    owner: str = "",
) -> Event:
    return Event(action, actor, 1_000.0 + n, partner=partner, object_id=object_id, owner=owner)


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds (unopened) stores over the same storage (another process: the CLI)."""
    return store_factory(request, tmp_path)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    await s.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
    await s.add_partner(PLATFORM, new_token_credential(PLATFORM.partner_id, now=2.0)[0])
    try:
        yield s
    finally:
        await s.close()


async def all_entries(store: Store) -> list[Event]:
    return [e.event for e in await store.audit_entries(AuditQuery(limit=10_000))]


# -- appending ----------------------------------------------------------------------------


async def test_each_entry_commits_to_the_one_before(store: Store) -> None:
    assert await store.audit_size() == 0
    first = await store.append_audit([event(0), event(1, object_id="indicator--x")])
    second = await store.append_audit([event(2)])
    entries = first + second
    assert [e.index for e in entries] == [0, 1, 2]
    previous = bytes(32)
    for entry in entries:
        index, prev, decoded = Event.decode(entry.data)
        assert (index, prev, decoded) == (entry.index, previous, entry.event)
        assert entry.leaf_hash == merkle.leaf_hash(entry.data)
        previous = entry.leaf_hash
    assert await store.audit_size() == 3
    assert await store.append_audit([]) == []
    stored = await store.audit_entries(AuditQuery())
    assert stored == entries
    rows = await store.audit_rows(1, 10)
    assert [(r.log_index, r.data, r.leaf_hash) for r in rows] == [
        (e.index, e.data, e.leaf_hash) for e in entries[1:]
    ]
    assert rows[0].object_id == "indicator--x" and rows[0].action == "lookup"
    assert await store.audit_leaf_hashes(0, 2) == [e.leaf_hash for e in entries[:2]]


async def test_two_processes_append_to_one_chain(store: Store, make_store: StoreFactory) -> None:
    # The CLI on the data directory (or the database) appends while the server runs.
    cli = make_store()
    await cli.open()
    try:
        for n in range(0, 20, 2):
            await store.append_audit([event(n)])
            await cli.append_audit([event(n + 1, actor=OPERATOR)])
    finally:
        await cli.close()
    assert await store.audit_size() == 20
    report = await verify_log(store, None)
    assert report.intact, report.summary
    assert report.entries_checked == 20


async def test_queries_filter_and_page(store: Store) -> None:
    await store.append_audit(
        [
            event(0, Action.SUBMIT, "ngo-1", object_id="indicator--a", owner="ngo-1"),
            event(1, Action.DELIVER, "plat-1", object_id="indicator--a", owner="ngo-1"),
            event(2, Action.LOOKUP, "plat-1", object_id="indicator--b", owner="ngo-2"),
            event(3, Action.PARTNER_UPDATE, OPERATOR, partner="plat-1"),
            event(4, Action.DELIVER, "ngo-3", object_id="indicator--b", owner="ngo-2"),
            event(5, Action.AUDIT_QUERY, "ngo-1"),
        ]
    )

    async def indexes(query: AuditQuery, only_of: str = "") -> list[int]:
        return [e.index for e in await store.audit_entries(query, only_of=only_of)]

    assert await indexes(AuditQuery()) == [0, 1, 2, 3, 4, 5]
    # By or about a partner: the actor, or the partner concerned.
    assert await indexes(AuditQuery(partner="plat-1")) == [1, 2, 3]
    assert await indexes(AuditQuery(object_id="indicator--b")) == [2, 4]
    assert await indexes(AuditQuery(action="deliver")) == [1, 4]
    assert await indexes(AuditQuery(since=1_002.0)) == [2, 3, 4, 5]
    assert await indexes(AuditQuery(until=1_002.0)) == [0, 1]
    assert await indexes(AuditQuery(action="deliver", since=1_001.5, until=1_010.0)) == [4]
    # Paging.
    assert await indexes(AuditQuery(limit=2)) == [0, 1]
    assert await indexes(AuditQuery(after_index=1, limit=2)) == [2, 3]
    assert await indexes(AuditQuery(after_index=5)) == []
    # Only what a partner did, and what was done with what it owns.
    assert await indexes(AuditQuery(), only_of="ngo-1") == [0, 1, 5]
    assert await indexes(AuditQuery(), only_of="ngo-2") == [2, 4]
    assert await indexes(AuditQuery(object_id="indicator--b"), only_of="ngo-3") == [4]
    assert await indexes(AuditQuery(partner="plat-1"), only_of="ngo-1") == [1]


async def test_entries_listing_objects_are_found_by_each_object(store: Store) -> None:
    # DELIVER entries list the versions one partner received; a query by object finds
    # every entry that names or lists it, and the scoped view is still by actor or owner.
    a, b, c = "indicator--a", "indicator--b", "indicator--c"

    def listed(*ids: str) -> tuple[tuple[str, str, str], ...]:
        return tuple((i, "2026-01-01T00:00:00.000Z", "0" * 64) for i in ids)

    await store.append_audit(
        [
            event(0, Action.SUBMIT, "ngo-1", object_id=a, owner="ngo-1"),
            Event(Action.DELIVER, "plat-1", 1_001.0, owner="ngo-1", objects=listed(a, b, a)),
            Event(Action.DELIVER, "ngo-3", 1_002.0, owner="ngo-1", objects=listed(b)),
            Event(Action.DELIVER, "plat-1", 1_003.0, owner="", objects=listed(c)),
        ]
    )

    async def indexes(query: AuditQuery, only_of: str = "") -> list[int]:
        return [e.index for e in await store.audit_entries(query, only_of=only_of)]

    assert await indexes(AuditQuery(object_id=a)) == [0, 1]
    assert await indexes(AuditQuery(object_id=b)) == [1, 2]
    assert await indexes(AuditQuery(object_id=c)) == [3]
    assert await indexes(AuditQuery(object_id="indicator--d")) == []
    assert await indexes(AuditQuery(object_id=b, action="deliver", limit=1)) == [1]
    assert await indexes(AuditQuery(object_id=b, after_index=1)) == [2]
    # The owner sees who received its objects; a recipient only its own entries; an
    # entry without an owner (an implied recipient) only its recipient.
    assert await indexes(AuditQuery(object_id=b), only_of="ngo-1") == [1, 2]
    assert await indexes(AuditQuery(object_id=b), only_of="ngo-3") == [2]
    assert await indexes(AuditQuery(object_id=c), only_of="ngo-1") == []
    assert await indexes(AuditQuery(object_id=c), only_of="plat-1") == [3]
    (entry,) = await store.audit_entries(AuditQuery(object_id=c))
    assert entry.event.objects == listed(c)
    report = await verify_log(store, None)
    assert report.intact, report.summary


async def test_the_mirror_position(store: Store) -> None:
    assert await store.audit_mirror_position() == 0
    await store.set_audit_mirror_position(42)
    assert await store.audit_mirror_position() == 42


# -- SUBMIT entries with the objects -------------------------------------------------------


async def test_every_object_of_a_bundle_gets_a_submit_entry_in_bundle_order(
    store: Store,
) -> None:
    held, revoked = indicator(1), indicator(2, revoked=True)
    await store.commit_objects(NGO, [(held, green()), (revoked, green())], 5.0, policy.widen)
    before = await store.audit_size()

    newer = indicator(2, "2026-02-01T00:00:00.000Z", index=4)
    hijack = indicator(1, "2026-03-01T00:00:00.000Z", creator=PLATFORM.identity_id, index=0)
    fresh = indicator(3, index=2)
    duplicate = indicator(3, index=3)
    bad = Rejection("indicator--bad", "pattern", "a STIX pattern", 1, "2026-01-01T00:00:00Z")
    late = Rejection("indicator--late", "modified", "a timestamp", 5)
    committed = await store.commit_objects(
        PLATFORM,
        [(hijack, green(PLATFORM)), (fresh, green(PLATFORM)), (duplicate, green(PLATFORM)),
         (newer, green(PLATFORM))],
        7.0,
        policy.widen,
        rejected=[late, bad],
    )  # fmt: skip
    assert [c.outcome for c in committed] == [
        CommitOutcome.NOT_CREATOR,
        CommitOutcome.INSERTED,
        CommitOutcome.DUPLICATE,
        CommitOutcome.REVOKED,
    ]
    entries = (await store.audit_entries(AuditQuery(after_index=before - 1)))[:6]
    assert await store.audit_size() == before + 6
    events = [e.event for e in entries]
    assert [e.object_id for e in events] == [
        hijack.object_id,
        "indicator--bad",
        fresh.object_id,
        duplicate.object_id,
        newer.object_id,
        "indicator--late",
    ]
    assert {(e.action, e.actor, e.owner, e.at) for e in events} == {
        (Action.SUBMIT, "plat-1", "plat-1", 7.0)
    }
    assert [e.detail["outcome"] for e in events] == [
        ObjectOutcome.REJECTED,
        ObjectOutcome.REJECTED,
        ObjectOutcome.ACCEPTED,
        ObjectOutcome.DUPLICATE,
        ObjectOutcome.REJECTED,
        ObjectOutcome.REJECTED,
    ]
    # Refused by the store: with the reason the submitter is told.
    assert events[0].detail["property"] == "id"
    assert "only its creator may publish" in str(events[0].detail["reason"])
    assert events[4].detail["property"] == "revoked"
    assert "revoked" in str(events[4].detail["reason"])
    assert events[1].detail == {
        "outcome": "rejected",
        "property": "pattern",
        "reason": "a STIX pattern",
    }
    assert events[1].version == "2026-01-01T00:00:00Z"
    # Only an inserted version has a digest of what was stored, and a receipt.
    assert events[2].digest and events[2].version == fresh.version
    assert [c.receipt is not None for c in committed] == [False, True, False, False]
    receipt = committed[1].receipt
    assert receipt is not None
    assert receipt == (entries[2].index, entries[2].leaf_hash, entries[2].data)


async def test_a_bundle_of_rejections_only_is_recorded(store: Store) -> None:
    bad = Rejection("indicator--bad", "pattern", "a STIX pattern", 0)
    assert await store.commit_objects(NGO, [], 3.0, policy.widen, rejected=[bad]) == []
    [entry] = await store.audit_entries(AuditQuery())
    assert entry.event.detail["outcome"] == "rejected" and entry.event.actor == "ngo-1"
    assert await store.commit_objects(NGO, [], 3.0, policy.widen) == []
    assert await store.audit_size() == 1


@contextlib.asynccontextmanager
async def audit_inserts_fail(
    store: Store, request: pytest.FixtureRequest
) -> AsyncIterator[type[Exception]]:
    """While open, every insert into the audit table fails with "disk full" (a trigger,
    written by another connection); yields the error the store lets through."""
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store.path)
        conn.execute(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        conn.commit()
        try:
            yield sqlite3.IntegrityError
        finally:
            conn.execute("DROP TRIGGER no_audit")
            conn.commit()
            conn.close()
        return
    import asyncpg  # noqa: PLC0415 (PostgreSQL only)

    pg = await asyncpg.connect(request.getfixturevalue("postgres_url"))
    try:
        await pg.execute(
            "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
            " CREATE TRIGGER no_audit BEFORE INSERT ON audit"
            " FOR EACH ROW EXECUTE FUNCTION no_audit()"
        )
        try:
            yield asyncpg.RaiseError
        finally:
            await pg.execute("DROP TRIGGER no_audit ON audit; DROP FUNCTION no_audit()")
    finally:
        await pg.close()


async def test_a_failed_commit_writes_neither_objects_nor_entries(
    store: Store, request: pytest.FixtureRequest
) -> None:
    await store.commit_objects(NGO, [(indicator(1), green())], 1.0, policy.widen)
    size = await store.audit_size()

    def broken_widen(held: Audience, asked: Audience) -> Audience:
        raise RuntimeError("policy failed")

    # The objects fail (after a first one was inserted and its entry prepared).
    bundle = [(indicator(2), green()), (indicator(1, "2026-05-01T00:00:00.000Z"), green())]
    with pytest.raises(RuntimeError, match="policy failed"):
        await store.commit_objects(NGO, bundle, 2.0, broken_widen)
    assert await store.object_copies(indicator(2).object_id) == []
    assert await store.audit_size() == size

    # The audit entries fail (after the objects and outbox rows were inserted).
    async with audit_inserts_fail(store, request) as failure:
        with pytest.raises(failure, match="disk full"):
            await store.commit_objects(NGO, [(indicator(3), green())], 3.0, policy.widen)
        assert await store.object_copies(indicator(3).object_id) == []
        assert [p.obj.object_id for p in await store.pending_outbox(10)] == [indicator(1).object_id]
        # ...and so does an append alone, leaving the chain as it was.
        with pytest.raises(failure, match="disk full"):
            await store.append_audit([event(0)])
    assert await store.audit_size() == size
    assert (await verify_log(store, None)).intact


# -- checkpoints and proofs ---------------------------------------------------------------


async def test_checkpoints_are_kept_once_per_size(store: Store) -> None:
    assert await store.latest_checkpoint() is None
    assert await store.checkpoints() == []
    a, b = SignedCheckpoint(5, b"note 5", b"sig 5"), SignedCheckpoint(2, b"note 2", b"sig 2")
    await store.add_checkpoint(a)
    await store.add_checkpoint(b)
    await store.add_checkpoint(SignedCheckpoint(5, b"another note", b"another sig"))
    assert await store.checkpoints() == [b, a]
    assert await store.latest_checkpoint() == a


async def test_a_checkpoint_is_signed_when_the_log_has_grown(store: Store) -> None:
    signer = Signer.generate()
    log = AuditLog(store, signer, ORIGIN)
    empty = await log.checkpoint()
    assert empty.tree_size == 0
    assert Checkpoint.parse(empty.note, empty.signature).root_hash == merkle.EMPTY_ROOT

    entries = await store.append_audit([event(n) for n in range(7)])
    first = await log.checkpoint()
    assert await log.checkpoint() == first  # not grown: the same one
    parsed = Checkpoint.parse(first.note, first.signature)
    parsed.verify(signer.public_key_pem)
    assert (parsed.origin, parsed.tree_size) == (ORIGIN, 7)
    assert parsed.root_hash == merkle.root_hash([e.leaf_hash for e in entries])

    await store.append_audit([event(7)])
    second = await log.checkpoint()
    assert second.tree_size == 8
    assert await store.checkpoints() == [empty, first, second]

    # Without a key: the kept checkpoint while the log has not grown, then refused.
    reader = AuditLog(store, None, ORIGIN)
    assert await reader.checkpoint() == second
    await store.append_audit([event(8)])
    with pytest.raises(Unavailable, match="no signing key"):
        await reader.checkpoint()


async def test_proofs_are_rfc9162_and_verify(store: Store) -> None:
    signer = Signer.generate()
    log = AuditLog(store, signer, ORIGIN)
    leaves: list[bytes] = []
    kept: list[SignedCheckpoint] = []
    for batch in (1, 2, 5, 13, 1, 30):  # odd sizes, grown in steps
        entries = await store.append_audit([event(len(leaves) + n) for n in range(batch)])
        leaves += [e.leaf_hash for e in entries]
        kept.append(await log.checkpoint())
    for size in range(1, len(leaves) + 1):
        root = merkle.root_hash(leaves[:size])
        assert await log.root(size) == root
        for index in range(size):
            proof = await log.inclusion_proof(index, size)
            assert proof == merkle.inclusion_proof(leaves[:size], index)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, root)
        for first in range(1, size + 1):
            proof = await log.consistency_proof(first, size)
            assert proof == merkle.consistency_proof(leaves[:size], first)
    # Between two kept checkpoints, with only what they say.
    for older, newer in itertools.pairwise(kept):
        a = Checkpoint.parse(older.note, older.signature)
        b = Checkpoint.parse(newer.note, newer.signature)
        proof = await log.consistency_proof(a.tree_size, b.tree_size)
        assert merkle.verify_consistency(a.tree_size, b.tree_size, proof, a.root_hash, b.root_hash)
    # A receipt checks against a checkpoint.
    [done] = await store.commit_objects(NGO, [(indicator(9), green())], 1.0, policy.widen)
    assert done.receipt is not None
    latest = Checkpoint.parse(*(await log.checkpoint())[1:])
    proof = await log.inclusion_proof(done.receipt.log_index, latest.tree_size)
    assert merkle.verify_inclusion(
        merkle.leaf_hash(done.receipt.entry),
        done.receipt.log_index,
        latest.tree_size,
        proof,
        latest.root_hash,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda log: log.inclusion_proof(3, 3), r"entry 3 is not in the tree of 3 entries"),
        (lambda log: log.inclusion_proof(-1, 3), r"entry -1 is not in the tree"),
        (lambda log: log.inclusion_proof(0, 0), r"a tree of 0 entries holds no entry"),
        (lambda log: log.inclusion_proof(0, 6), r"no tree of 6 entries: the audit log holds 5"),
        (lambda log: log.consistency_proof(0, 3), r"no consistency proof from 0 to 3"),
        (lambda log: log.consistency_proof(4, 3), r"no consistency proof from 4 to 3"),
        (lambda log: log.consistency_proof(2, 9), r"no tree of 9 entries"),
        (lambda log: log.root(6), r"no tree of 6 entries"),
    ],
)
async def test_impossible_proofs_are_refused(store: Store, call: object, message: str) -> None:
    await store.append_audit([event(n) for n in range(5)])
    log = AuditLog(store, None, ORIGIN)
    assert callable(call)
    with pytest.raises(InvalidArgument, match=message):
        await call(log)


async def test_the_log_catches_up_with_appends_by_others(
    store: Store, make_store: StoreFactory
) -> None:
    log = AuditLog(store, Signer.generate(), ORIGIN)
    leaves = [e.leaf_hash for e in await store.append_audit([event(n) for n in range(3)])]
    assert await log.root(3) == merkle.root_hash(leaves)
    other = make_store()
    await other.open()
    try:
        leaves += [e.leaf_hash for e in await other.append_audit([event(3), event(4)])]
    finally:
        await other.close()
    assert await log.root(5) == merkle.root_hash(leaves)
    assert (await log.checkpoint()).tree_size == 5


# -- the signing key ----------------------------------------------------------------------


def test_the_signing_key_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "deep" / "audit-signing-key.pem"
    created = Signer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = Signer.load_or_create(path)
    loaded = Signer.load(path)
    assert created.key_id == again.key_id == loaded.key_id
    assert len(created.key_id) == 16
    assert created.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    signed = loaded.sign(ORIGIN, 3, bytes(32), 1_700_000_000_000_000_000)
    Checkpoint.parse(signed.note, signed.signature).verify(created.public_key_pem)


def test_a_bad_signing_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(Unavailable, match=f"no audit signing key at {missing}"):
        Signer.load(missing)
    assert not missing.exists()

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(Unavailable, match=f"{garbage} is not an unencrypted PEM private key"):
        Signer.load_or_create(garbage)
    assert garbage.read_text() == "not a key"  # never replaced

    other = tmp_path / "ec.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    other.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(Unavailable, match=f"{other} is not an Ed25519 private key"):
        Signer.load_or_create(other)

    unreadable = tmp_path / "a-directory.pem"
    unreadable.mkdir()
    with pytest.raises(Unavailable, match=f"cannot read the audit signing key {unreadable}"):
        Signer.load_or_create(unreadable)
