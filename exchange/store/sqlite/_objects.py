"""Objects and the outbox in SQLite: one transaction per bundle, the relay's reads."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import orjson

from exchange.bus import TopicPartition
from exchange.model import (
    Audience,
    Partner,
    Rejection,
    StoredObject,
    ValidObject,
    version_key,
)
from exchange.store import CommitOutcome, Committed, PublishedQuery, SetAsideRow
from exchange.store._common import (
    CopyKey,
    Held,
    HeldCopies,
    copy_key,
    nothing_to_commit,
    published_where,
    set_aside_of,
    set_aside_reason,
    stored_of,
)
from exchange.store._erasure import REFERRING_TYPES, newest_key
from exchange.store._group import GroupCommits, Outcome, Submission
from exchange.store.sqlite import _audit  # its module attribute: bench/audit.py swaps it
from exchange.store.sqlite._connection import _Connections
from exchange.store.sqlite._sql import (
    _INSERT_REFS,
    _OBJECT_COLUMNS,
    _PENDING_WITHIN,
    _RECORD_POSITION,
    _chunks,
)

# -- objects (inside a write transaction) -------------------------------------------------


def _commit(
    conn: sqlite3.Connection,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
    *,
    rejected: Sequence[Rejection],
) -> list[Committed]:
    results = _insert_objects(conn, submitter, objects, accepted_at, widen)
    # One SUBMIT entry per object of the bundle, in bundle order.
    return _audit.append_submits(
        conn, submitter.partner_id, objects, results, rejected, at=accepted_at
    )


_INSERT_OBJECT = (
    "INSERT INTO objects (object_id, version, version_key, object_type, created_by_ref,"
    " submitter, tlp, labels, revoked, spec_version, accepted_at, body, audience)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_objects(
    conn: sqlite3.Connection,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
) -> list[Committed]:
    held = _held_versions(conn, {o.object_id for o, _ in objects})
    results: list[Committed] = []
    rows: list[tuple[object, ...]] = []
    # A bundle's objects mostly share one audience (and no labels): encoded once.
    encoded: dict[Audience, str] = {}
    partner_id = submitter.partner_id
    for obj, asked in objects:
        key = version_key(obj.version)
        versions = held.of(obj)
        refused = versions.refuses(obj, key)
        if refused is not None:
            results.append(Committed(refused))
            continue
        # The latest version holds the cumulative audience: an audience never narrows.
        audience = asked if versions.audience is None else widen(versions.audience, asked)
        audience_json = encoded.get(audience)
        if audience_json is None:
            audience_json = encoded[audience] = audience.to_json().decode()
        rows.append(
            (
                obj.object_id,
                obj.version,
                key,
                obj.object_type,
                obj.created_by_ref,
                partner_id,
                obj.tlp.value,
                orjson.dumps(obj.labels).decode() if obj.labels else "[]",
                int(obj.revoked),
                obj.spec_version,
                accepted_at,
                obj.body,
                audience_json,
            )
        )
        versions.add(obj, key, audience)
        results.append(Committed(CommitOutcome.INSERTED, audience))
    if rows:
        # Under the write lock, and with AUTOINCREMENT, this statement's rows take
        # the sequence numbers above the largest one held, in order.
        last = conn.execute("SELECT seq FROM objects ORDER BY seq DESC LIMIT 1").fetchone()
        conn.executemany(_INSERT_OBJECT, rows)
        conn.execute(
            "INSERT INTO outbox (seq) SELECT seq FROM objects WHERE seq > ? ORDER BY seq",
            (0 if last is None else last[0],),
        )
        if any(row[3] in REFERRING_TYPES for row in rows):
            conn.execute(_INSERT_REFS, (0 if last is None else last[0],))
    return results


def _commit_one(conn: sqlite3.Connection, s: Submission) -> list[Committed]:
    return _commit(conn, s.submitter, s.objects, s.accepted_at, s.widen, rejected=s.rejected)


class _Lost(Exception):
    """A submission's error ended the whole transaction (SQLite rolled it back)."""


def _commit_group(conn: sqlite3.Connection, group: Sequence[Submission]) -> list[Outcome]:
    """Several submissions in the transaction on ``conn``, each in a savepoint: one
    that fails is rolled back alone (its outcome is its error). _Lost if an error took
    the whole transaction with it (SQLITE_FULL, say): nothing of the group stays."""
    outcomes: list[Outcome] = []
    for submission in group:
        conn.execute("SAVEPOINT submission")
        try:
            committed = _commit_one(conn, submission)
        except Exception as exc:  # that submission's caller gets it
            if not conn.in_transaction:
                raise _Lost from exc
            conn.execute("ROLLBACK TO submission")
            conn.execute("RELEASE submission")
            outcomes.append(exc)
        else:
            conn.execute("RELEASE submission")
            outcomes.append(committed)
    return outcomes


def _held_versions(conn: sqlite3.Connection, ids: set[str]) -> HeldCopies:
    """What is held of ``ids``, per copy (``copy_key``), and what was erased of them
    from every copy."""
    held = HeldCopies()
    latest: dict[CopyKey, str] = {}
    for chunk in _chunks(sorted(ids)):
        marks = ",".join("?" * len(chunk))
        # A registered partner's identity object (an SDO) belongs to that partner,
        # even before it submitted it: nobody else may publish it.
        for (identity,) in conn.execute(
            f"SELECT identity_id FROM partners WHERE identity_id IN ({marks})",  # noqa: S608
            chunk,
        ):
            held.setdefault((str(identity), ""), Held()).creator = str(identity)
        for oid, otype, key, creator, revoked, audience, erased_at in conn.execute(
            "SELECT object_id, object_type, version_key, created_by_ref, revoked,"  # noqa: S608
            f" audience, erased_at FROM objects WHERE object_id IN ({marks}) ORDER BY seq",
            chunk,
        ):
            copy = copy_key(str(oid), str(otype), str(creator))
            entry = held.setdefault(copy, Held())
            entry.creator = str(creator)
            entry.keys.add(str(key))
            entry.revoked = entry.revoked or bool(revoked)
            if erased_at is not None:
                entry.erased = max(entry.erased or "", str(key))
            latest[copy] = audience
        for oid, versions in conn.execute(
            "SELECT object_id, versions FROM erasures"  # noqa: S608
            f" WHERE every_copy = 1 AND object_id IN ({marks})",
            chunk,
        ):
            held.erased_from_every_copy(str(oid), newest_key(versions))
    for copy, audience in latest.items():
        held[copy].audience = Audience.from_json(audience)
    return held


class _ObjectRows(_Connections):
    """``ObjectStore`` on SQLite."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Concurrent commit_objects calls share a transaction (exchange/store/_group.py).
        self._groups = GroupCommits(self._commit_group)

    @property
    def commit_transactions(self) -> int:
        """Transactions ``commit_objects`` has committed (fewer than its calls when
        concurrent calls shared one)."""
        return self._groups.transactions

    async def close(self) -> None:
        await self._groups.drain()
        await super().close()

    # -- objects ----------------------------------------------------------------
    async def commit_objects(
        self,
        submitter: Partner,
        objects: Sequence[tuple[ValidObject, Audience]],
        accepted_at: float,
        widen: Callable[[Audience, Audience], Audience],
        rejected: Sequence[Rejection] = (),
    ) -> list[Committed]:
        if nothing_to_commit(objects, rejected):
            return []
        return await self._groups.commit(
            Submission(submitter, objects, accepted_at, widen, rejected)
        )

    async def _commit_group(self, group: Sequence[Submission]) -> list[Outcome]:
        """``group`` in one transaction (GroupCommits' ``run``); alone, each in one
        of its own, when an error rolled the shared one back."""
        outcomes: list[Outcome] | None = None
        if len(group) > 1:
            try:
                outcomes = await self._write(lambda conn: _commit_group(conn, group))
                self._groups.transactions += 1
            except (_Lost, sqlite3.Error, OSError):
                outcomes = None  # nothing was committed: each on its own below
        if outcomes is None:
            outcomes = []
            for submission in group:
                try:
                    outcomes.append(await self._write(partial(_commit_one, s=submission)))
                    self._groups.transactions += 1
                except Exception as exc:  # noqa: BLE001 - that submission's caller gets it
                    outcomes.append(exc)
        else:
            outcomes = [self._mapped(o) if isinstance(o, BaseException) else o for o in outcomes]
        if any(
            not isinstance(o, BaseException) and any(c.outcome is CommitOutcome.INSERTED for c in o)
            for o in outcomes
        ):
            self._outbox_added()
        return outcomes

    async def submitters_of(self, object_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        wanted = sorted(set(object_ids))

        def run(conn: sqlite3.Connection) -> dict[str, frozenset[str]]:
            out: dict[str, set[str]] = {}
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                # Every version of an SDO or SRO comes from its creator; an observable's
                # copies from each partner that submitted one.
                for oid, submitter in conn.execute(
                    "SELECT DISTINCT object_id, submitter FROM objects"  # noqa: S608
                    f" WHERE object_id IN ({marks})",
                    chunk,
                ):
                    out.setdefault(str(oid), set()).add(str(submitter))
            return {oid: frozenset(submitters) for oid, submitters in out.items()}

        return await self._read(run)

    async def object_copies(self, object_id: str, version: str | None = None) -> list[StoredObject]:
        def run(conn: sqlite3.Connection) -> list[StoredObject]:
            if version is None:
                # The latest version of each copy (one copy per creator).
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE o.object_id = ?"  # noqa: S608
                    " AND o.seq = (SELECT l.seq FROM objects l WHERE l.object_id = o.object_id"
                    " AND l.created_by_ref = o.created_by_ref AND l.erased_at IS NULL"
                    " ORDER BY l.version_key DESC, l.seq DESC LIMIT 1)"
                    " ORDER BY o.seq",
                    (object_id,),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o"  # noqa: S608
                    " WHERE o.object_id = ? AND o.version_key = ? AND o.erased_at IS NULL"
                    " ORDER BY o.seq",
                    (object_id, version_key(version)),
                ).fetchall()
            # Each version under the audience it was stored (and delivered) with.
            return [stored_of(row, orjson.loads) for row in rows]

        return await self._read(run)

    async def published_objects(self, query: PublishedQuery) -> list[StoredObject]:
        where, params = published_where(query, lambda _: "?")

        def run(conn: sqlite3.Connection) -> list[StoredObject]:
            rows = conn.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE {where}",  # noqa: S608
                params,
            ).fetchall()
            return [stored_of(row, orjson.loads) for row in rows]

        return await self._read(run)

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int, max_bytes: int | None = None) -> list[StoredObject]:
        def run(conn: sqlite3.Connection) -> list[StoredObject]:
            if max_bytes is None:
                rows = conn.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM outbox b JOIN objects o USING (seq)"  # noqa: S608
                    " ORDER BY b.seq LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                query = _PENDING_WITHIN.format(columns=_OBJECT_COLUMNS)
                rows = conn.execute(query, (limit, max_bytes)).fetchall()
            return [stored_of(r, orjson.loads) for r in rows]

        return await self._read(run)

    async def mark_published(
        self,
        seqs: Sequence[int],
        positions: Mapping[TopicPartition, int],
        set_aside: Mapping[int, str] | None = None,
    ) -> None:
        aside = {int(seq): set_aside_reason(reason) for seq, reason in (set_aside or {}).items()}
        published = [(s,) for s in seqs if s not in aside]
        at = time.time()

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", published)
            for seq, reason in sorted(aside.items()):
                # Only a row still in the outbox: one another relay published is not
                # set aside after the fact.
                if conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount:
                    conn.execute(
                        "INSERT INTO set_aside (seq, reason, at) VALUES (?, ?, ?)"
                        " ON CONFLICT (seq) DO UPDATE SET reason = excluded.reason,"
                        " at = excluded.at",
                        (seq, reason, at),
                    )
            conn.executemany(_RECORD_POSITION, [(t, p, o) for (t, p), o in positions.items()])

        await self._write(run)

    async def set_aside_rows(self, limit: int = 1000) -> list[SetAsideRow]:
        def run(conn: sqlite3.Connection) -> list[SetAsideRow]:
            rows = conn.execute(
                "SELECT s.seq, o.object_id, o.version, o.submitter, s.reason, s.at"
                " FROM set_aside s JOIN objects o USING (seq) ORDER BY s.seq LIMIT ?",
                (max(limit, 0),),
            ).fetchall()
            return [set_aside_of(r) for r in rows]

        return await self._read(run)

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = sorted(set(topics))

        def run(conn: sqlite3.Connection) -> dict[TopicPartition, int]:
            out: dict[TopicPartition, int] = {}
            for chunk in _chunks(wanted):
                marks = ",".join("?" * len(chunk))
                for topic, partition, offset in conn.execute(
                    "SELECT topic, partition, next_offset FROM relay_positions"  # noqa: S608
                    f" WHERE topic IN ({marks})",
                    chunk,
                ):
                    out[(str(topic), int(partition))] = int(offset)
            return out

        return await self._read(run)
