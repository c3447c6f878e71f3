"""Tampering with the audit log's SQLite file, the way someone with the file would:
every edit, deletion, reordering or truncation makes ``verify_log`` report the log
not intact and name the first entry (or checkpoint) concerned (invariant 4). Where
the store's own checkpoints are deleted too, on SQLite and PostgreSQL, a checkpoint
the verifier kept catches it, and without one the result says it could not tell."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from exchange_protocol import merkle
from exchange_protocol.checkpoint import Checkpoint, make_note

from exchange.audit.entries import Action, Event
from exchange.audit.log import AuditLog
from exchange.audit.signer import Signer
from exchange.audit.verify import UNANCHORED, KeptCheckpoint, VerifyReport, verify_log
from exchange.errors import InvalidArgument
from exchange.store import Store
from exchange.store.sqlite import SqliteStore
from tests.postgres import STORES, store_factory
from tests.tampering import Intruder

SIZE = 100
# Checkpoints are signed at these sizes.
CHECKPOINTS = (40, SIZE)
SIGNER = Signer.generate()


def object_id(n: int) -> str:
    return f"indicator--00000000-0000-4000-8000-{n:012d}"


def event(n: int) -> Event:
    kind = (Action.SUBMIT, Action.DELIVER, Action.LOOKUP)[n % 3]
    if kind is Action.DELIVER:
        # What one partner received over a span: listed, not named.
        listed = tuple((object_id(n - k), "2026-01-01T00:00:00.000Z", f"{k:064x}") for k in (1, 0))
        return Event(
            kind, f"partner-{n % 4}", 1_700_000_000.0 + n / 7, owner="partner-0", objects=listed
        )
    return Event(
        kind,
        f"partner-{n % 4}",
        1_700_000_000.0 + n / 7,
        object_id=object_id(n),
        version="2026-01-01T00:00:00.000Z",
        digest=f"{n:064x}",
        owner="partner-0",
        detail={"outcome": "accepted"} if kind is Action.SUBMIT else {"found": True},
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A log of SIZE entries with checkpoints at CHECKPOINTS, appended in batches."""
    s = SqliteStore(tmp_path / "exchange.sqlite3")
    await s.open()
    log = AuditLog(s, SIGNER, "exchange.test")
    try:
        start = 0
        for size in CHECKPOINTS:
            for n in range(start, size, 7):
                await s.append_audit([event(i) for i in range(n, min(n + 7, size))])
            await log.checkpoint()
            start = size
        yield s
    finally:
        await s.close()


def tamper(store: SqliteStore, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    """Run ``statements`` on the file with a connection of its own, as an intruder would."""
    with closing(sqlite3.connect(store.path)) as conn, conn:
        for statement in statements:
            sql, args = (statement, ()) if isinstance(statement, str) else statement
            conn.execute(sql, args)


def row(store: SqliteStore, index: int) -> tuple[bytes, bytes]:
    with closing(sqlite3.connect(store.path)) as conn:
        data, leaf = conn.execute(
            "SELECT data, leaf_hash FROM audit WHERE idx = ?", (index,)
        ).fetchone()
    return bytes(data), bytes(leaf)


async def verify(
    store: SqliteStore, *, public_key: str | None = SIGNER.public_key_pem
) -> VerifyReport:
    return await verify_log(store, public_key)


def not_intact(report: VerifyReport, first_bad: int | None, problem: str) -> None:
    assert not report.intact, report.summary
    assert report.first_bad_index == first_bad, report.summary
    assert problem in report.problem, report.summary
    assert report.summary.startswith("audit log NOT intact: ")
    assert report.problem in report.summary
    assert "\n" not in report.summary


async def test_an_intact_log_is_reported_intact(store: SqliteStore) -> None:
    report = await verify(store)
    assert report == VerifyReport(
        intact=True,
        entries_checked=SIZE,
        checkpoints_checked=2,
        first_bad_index=None,
        problem="",
        summary="audit log intact: 100 entries, 2 checkpoints, latest signed at size 100"
        f" (key {SIGNER.key_id}); {UNANCHORED}",
    )
    unsigned = await verify(store, public_key=None)
    assert unsigned.intact and unsigned.checkpoints_checked == 2
    assert "signatures NOT checked" in unsigned.summary


async def test_an_empty_log_is_intact(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "empty.sqlite3")
    await s.open()
    try:
        report = await verify_log(s, SIGNER.public_key_pem)
        assert report.intact and report.entries_checked == 0
        assert report.summary == f"audit log intact: 0 entries, no checkpoint yet; {UNANCHORED}"
        await AuditLog(s, SIGNER, "exchange.test").checkpoint()
        assert (await verify_log(s, SIGNER.public_key_pem)).checkpoints_checked == 1
    finally:
        await s.close()


async def test_one_changed_byte_of_an_entry(store: SqliteStore) -> None:
    data, _ = row(store, 41)
    edited = data.replace(b'"partner-1"', b'"partner-2"', 1)
    assert edited != data
    tamper(store, ("UPDATE audit SET data = ? WHERE idx = 41", (edited,)))
    report = await verify(store)
    not_intact(report, 41, "leaf hash does not match its bytes")
    assert "entry 41 (lookup indicator--00000000-0000-4000-8000-000000000041)" in report.summary
    assert report.entries_checked == 41
    assert report.checkpoints_checked == 1  # the one at 40 held


async def test_a_changed_query_column(store: SqliteStore) -> None:
    tamper(store, "UPDATE audit SET actor = 'someone-else' WHERE idx = 41")
    not_intact(await verify(store), 41, "query column actor is 'someone-else'")
    tamper(store, "UPDATE audit SET actor = 'partner-1', at = at + 1 WHERE idx = 41")
    not_intact(await verify(store), 41, "query column at")
    # Stored with another type: still read, and found wrong.
    tamper(store, "UPDATE audit SET at = CAST(at AS TEXT) WHERE idx = 41")
    not_intact(await verify(store), 41, "query column at")


async def test_a_deleted_row_of_the_index_of_listed_objects(both: tuple[Store, Intruder]) -> None:
    # Entry 160 lists objects 159 and 160; without the index row for 159, a query by
    # that object would not find who received it, while every hash still holds.
    store, intruder = both
    await intruder.run(("DELETE FROM audit_objects WHERE object_id = ?", (object_id(159),)))
    report = await verify_log(store, SIGNER.public_key_pem)
    not_intact(report, 160, f"the index of listed objects lacks its {object_id(159)}")
    assert "entry 160 (deliver)" in report.summary


async def test_listed_objects_that_are_not_triples(store: SqliteStore) -> None:
    data, _ = row(store, 40)
    edited = data.replace(b'"objects":[[', b'"objects":[[1,', 1)
    assert edited != data
    tamper(
        store,
        (
            "UPDATE audit SET data = ?, leaf_hash = ? WHERE idx = 40",
            (edited, merkle.leaf_hash(edited)),
        ),
    )
    not_intact(await verify(store), 40, "its bytes are not an audit entry")


async def test_bytes_stored_as_text(store: SqliteStore) -> None:
    tamper(
        store,
        "UPDATE audit SET data = CAST(data AS TEXT) WHERE idx = 41",
        "UPDATE audit_checkpoints SET signature = 'text' WHERE tree_size = 100",
    )
    # The same bytes as text are the same entry; a signature of other bytes is not.
    report = await verify(store)
    not_intact(report, None, "its signature does not verify")
    assert report.entries_checked == SIZE


async def test_a_deleted_entry(store: SqliteStore) -> None:
    tamper(store, "DELETE FROM audit WHERE idx = 50")
    not_intact(await verify(store), 50, "missing (deleted): the log goes from entry 49 to 51")


async def test_a_deleted_first_entry(store: SqliteStore) -> None:
    tamper(store, "DELETE FROM audit WHERE idx = 0")
    not_intact(await verify(store), 0, "the log starts at entry 1")


async def test_two_entries_swapped(store: SqliteStore) -> None:
    # Each row keeps its index but takes the other's contents: a reordering.
    columns = "at, action, actor, partner, object_id, owner, data, leaf_hash"
    tamper(
        store,
        "CREATE TEMP TABLE saved AS SELECT * FROM audit WHERE idx IN (60, 61)",
        f"UPDATE audit SET ({columns}) = (SELECT {columns} FROM saved"  # noqa: S608
        " WHERE saved.idx = 121 - audit.idx) WHERE idx IN (60, 61)",
    )
    assert row(store, 60)[1] == merkle.leaf_hash(row(store, 60)[0])
    not_intact(await verify(store), 60, "its bytes say index 61")


async def test_an_entry_moved_with_its_index(store: SqliteStore) -> None:
    # Renumbered to fill the gap it leaves: its bytes still say where it was.
    tamper(store, "DELETE FROM audit WHERE idx = 70", "UPDATE audit SET idx = 70 WHERE idx = 71")
    not_intact(await verify(store), 70, "its bytes say index 71")


async def test_a_replaced_entry_breaks_the_chain(store: SqliteStore) -> None:
    # An entry rewritten consistently in itself (index, bytes, leaf hash, columns)
    # but over another previous hash: the next entry no longer follows it.
    forged = replace(event(30), actor="partner-9")
    data = forged.encode(30, bytes(32))
    tamper(
        store,
        (
            "UPDATE audit SET data = ?, leaf_hash = ?, actor = ? WHERE idx = 30",
            (data, merkle.leaf_hash(data), "partner-9"),
        ),
    )
    not_intact(await verify(store), 30, "does not follow entry 29")


async def test_a_truncated_log(store: SqliteStore) -> None:
    tamper(store, "DELETE FROM audit WHERE idx >= 90")
    report = await verify(store)
    not_intact(report, 90, "entries 90 to 99 are missing (truncated)")
    assert report.entries_checked == 90 and report.checkpoints_checked == 1


async def test_a_truncated_log_is_not_hidden_by_its_checkpoint_gone(store: SqliteStore) -> None:
    # With the latest checkpoint deleted too, the earlier one still vouches for 40.
    tamper(
        store,
        "DELETE FROM audit WHERE idx >= 30",
        "DELETE FROM audit_checkpoints WHERE tree_size = 100",
    )
    not_intact(await verify(store), 30, "entries 30 to 39 are missing (truncated)")


async def test_an_edited_checkpoint_note(store: SqliteStore) -> None:
    # Its root replaced by the root of other entries: the signature no longer matches.
    with closing(sqlite3.connect(store.path)) as conn:
        (note,) = conn.execute("SELECT note FROM audit_checkpoints WHERE tree_size = 40").fetchone()
    origin, size, _, at, _ = note.decode().split("\n")
    other_root = merkle.root_hash([merkle.leaf_hash(b"forged")])
    forged = make_note(origin, int(size), other_root, int(at))
    tamper(store, ("UPDATE audit_checkpoints SET note = ? WHERE tree_size = 40", (forged,)))
    report = await verify(store)
    not_intact(report, None, "its signature does not verify with the public key")
    assert "checkpoint at size 40" in report.summary
    # Without the public key, its root still does not match the entries.
    not_intact(
        await verify(store, public_key=None), 0, "its root does not match the stored entries"
    )
    # A note that is not a note at all.
    tamper(store, "UPDATE audit_checkpoints SET note = X'00ff' WHERE tree_size = 40")
    not_intact(await verify(store, public_key=None), None, "not a checkpoint note")


async def test_a_checkpoint_note_of_another_size(store: SqliteStore) -> None:
    tamper(store, "UPDATE audit_checkpoints SET tree_size = 41 WHERE tree_size = 40")
    not_intact(await verify(store), None, "its note says size 40")


async def test_an_edited_checkpoint_signature(store: SqliteStore) -> None:
    [signature] = [c.signature for c in await store.checkpoints() if c.tree_size == SIZE]
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    tamper(store, ("UPDATE audit_checkpoints SET signature = ? WHERE tree_size = 100", (forged,)))
    report = await verify(store)
    not_intact(report, None, "its signature does not verify")
    assert "checkpoint at size 100" in report.summary
    assert report.entries_checked == SIZE and report.checkpoints_checked == 1


async def test_another_key(store: SqliteStore) -> None:
    not_intact(
        await verify(store, public_key=Signer.generate().public_key_pem),
        None,
        "its signature does not verify",
    )


async def test_an_edit_with_every_hash_after_it_recomputed(store: SqliteStore) -> None:
    # Every check between entries passes; the checkpoint signed after the edit does not.
    with closing(sqlite3.connect(store.path)) as conn, conn:
        previous = bytes(conn.execute("SELECT leaf_hash FROM audit WHERE idx = 40").fetchone()[0])
        for index in range(41, SIZE):
            (data,) = conn.execute("SELECT data FROM audit WHERE idx = ?", (index,)).fetchone()
            _, _, original = Event.decode(data)
            changed = replace(original, actor="partner-9") if index == 41 else original
            data = changed.encode(index, previous)
            previous = merkle.leaf_hash(data)
            conn.execute(
                "UPDATE audit SET data = ?, leaf_hash = ?, actor = ? WHERE idx = ?",
                (data, previous, changed.actor, index),
            )
    report = await verify(store)
    not_intact(report, 40, "its root does not match the stored entries: an entry from 40 to 99")
    assert "checkpoint at size 100 (signed 2" in report.summary
    assert report.entries_checked == SIZE and report.checkpoints_checked == 1


async def test_a_range(store: SqliteStore) -> None:
    report = await verify_log(store, SIGNER.public_key_pem, start=30, end=60)
    assert report.intact and report.entries_checked == 30
    assert report.summary.startswith(
        "audit log intact: entries 30 to 59 (30 of 100), 1 checkpoint,"
    )
    tamper(store, "DELETE FROM audit WHERE idx = 50")
    not_intact(await verify_log(store, None, start=45, end=55), 50, "missing (deleted)")
    # Before the range, the leaf hashes are taken as stored.
    not_intact(await verify_log(store, None, start=60), None, "missing (deleted): only 59 of them")
    assert (await verify_log(store, None, start=0, end=50)).intact


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [(-1, None, "from entry -1"), (101, None, "from entry 101"), (50, 40, "to 40")],
)
async def test_an_impossible_range(
    store: SqliteStore, start: int, end: int | None, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await verify_log(store, None, start=start, end=end)


async def test_a_public_key_that_is_not_ed25519(store: SqliteStore) -> None:
    with pytest.raises(InvalidArgument, match="not a PEM public key"):
        await verify_log(store, "not a key")


# -- checkpoints the verifier kept (the store's own can be deleted with the entries) ------------
#
# Defect 12 exactly: with every checkpoint row deleted (or the larger ones, or both tables
# emptied) the stored log looks intact. A checkpoint the auditor kept still catches it,
# on both stores; without one, the result says the check was weaker.

KEPT_SIZE = 215
KEPT_FROM = "kept-2026-11-27.json"


@pytest.fixture(params=STORES)
async def both(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Intruder]]:
    """A log of KEPT_SIZE entries with checkpoints at 100 and KEPT_SIZE, on each store."""
    make = store_factory(request, tmp_path)
    s = make()
    await s.open()
    where = (
        str(tmp_path / "exchange.sqlite3")
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    log = AuditLog(s, SIGNER, "exchange.test")
    try:
        start = 0
        for size in (100, KEPT_SIZE):
            for n in range(start, size, 25):
                await s.append_audit([event(i) for i in range(n, min(n + 25, size))])
            await log.checkpoint()
            start = size
        yield s, Intruder(request.param, where)
    finally:
        await s.close()


async def kept_now(store: Store) -> KeptCheckpoint:
    """The latest checkpoint, as an auditor keeps it (a copy outside the store)."""
    latest = await store.latest_checkpoint()
    assert latest is not None and latest.tree_size == KEPT_SIZE
    return KeptCheckpoint(Checkpoint.parse(latest.note, latest.signature), KEPT_FROM)


def unanchored(report: VerifyReport) -> None:
    """Intact as far as the store can tell, and saying that it cannot tell more."""
    assert report.intact, report.summary
    assert report.summary.endswith(f"; {UNANCHORED}"), report.summary


async def test_a_kept_checkpoint_is_held_by_an_intact_log(both: tuple[Store, Intruder]) -> None:
    store, _ = both
    kept = await kept_now(store)
    report = await verify_log(store, SIGNER.public_key_pem, kept=[kept])
    assert report.intact and report.kept_checked == 1, report.summary
    assert report.summary.endswith(f"; holds the checkpoint you kept, of size {KEPT_SIZE}")
    unanchored(await verify_log(store, SIGNER.public_key_pem))
    # Without a key, the kept checkpoint's root is still compared, and the result says so.
    unsigned = await verify_log(store, None, kept=[kept])
    assert unsigned.intact and "signatures NOT checked" in unsigned.summary


async def test_an_edit_with_the_chain_recomputed_and_every_checkpoint_deleted(
    both: tuple[Store, Intruder],
) -> None:
    store, intruder = both
    kept = await kept_now(store)
    await intruder.rewrite(store, 41)
    await intruder.run("DELETE FROM audit_checkpoints")
    unanchored(await verify_log(store, SIGNER.public_key_pem))
    report = await verify_log(store, SIGNER.public_key_pem, kept=[kept])
    not_intact(report, 0, f"entries before {KEPT_SIZE} differ from the checkpoint you kept")
    assert f"the checkpoint you kept ({KEPT_FROM}, size {KEPT_SIZE}, signed 2" in report.summary


async def test_a_truncated_log_with_its_larger_checkpoints_deleted(
    both: tuple[Store, Intruder],
) -> None:
    store, intruder = both
    kept = await kept_now(store)
    await intruder.truncate(store, 120)
    unanchored(await verify_log(store, SIGNER.public_key_pem))
    report = await verify_log(store, SIGNER.public_key_pem, kept=[kept])
    not_intact(
        report,
        120,
        f"the log holds 120 entries, fewer than the {KEPT_SIZE} of the checkpoint you kept:"
        f" entries 120 to {KEPT_SIZE - 1} are missing (truncated)",
    )
    assert report.entries_checked == 120 and report.checkpoints_checked == 1


async def test_both_tables_emptied(both: tuple[Store, Intruder]) -> None:
    store, intruder = both
    kept = await kept_now(store)
    await intruder.truncate(store, 0)
    report = await verify_log(store, SIGNER.public_key_pem)
    unanchored(report)
    assert report.summary.startswith("audit log intact: 0 entries, no checkpoint yet;")
    not_intact(
        await verify_log(store, SIGNER.public_key_pem, kept=[kept]),
        0,
        f"the log holds 0 entries, fewer than the {KEPT_SIZE} of the checkpoint you kept",
    )


async def test_a_rewrite_covered_by_new_checkpoints_signed_with_the_key(
    both: tuple[Store, Intruder],
) -> None:
    # Whoever can read the data directory can also sign: re-signed checkpoints over the
    # rewritten log pass, the kept one (signed before) does not.
    store, intruder = both
    kept = await kept_now(store)
    await intruder.rewrite(store, 150)
    await intruder.run("DELETE FROM audit_checkpoints")
    await AuditLog(store, SIGNER, "exchange.test").checkpoint()
    assert (await verify_log(store, SIGNER.public_key_pem)).intact
    not_intact(
        await verify_log(store, SIGNER.public_key_pem, kept=[kept]),
        0,
        f"entries before {KEPT_SIZE} differ from the checkpoint you kept",
    )


async def test_a_kept_checkpoint_of_another_key(both: tuple[Store, Intruder]) -> None:
    # The key in the data directory replaced (everything re-signed), or not this log's.
    store, _ = both
    kept = await kept_now(store)
    other = Signer.generate()
    report = await verify_log(store, other.public_key_pem, kept=[kept])
    assert not report.intact
    assert "its signature does not verify with the public key" in report.problem
    kept_report = await verify_log(store, None, kept=[kept, kept])
    assert kept_report.intact and kept_report.kept_checked == 2
    assert "holds the 2 checkpoints you kept, the largest of size 215" in kept_report.summary
