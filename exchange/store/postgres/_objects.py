"""Objects and the outbox in PostgreSQL: one transaction per bundle (after the audit
chain's head is locked), the relay's reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from exchange.bus import TopicPartition
from exchange.errors import AlreadyExists, InvalidArgument
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
    nul_in_bundle,
    published_where,
    set_aside_of,
    set_aside_reason,
    stored_of,
    submit_entries,
    unstorable_text,
)
from exchange.store._erasure import newest_key
from exchange.store._group import GroupCommits, Outcome, Submission
from exchange.store.postgres._audit import _insert_audit_rows, _lock_audit_head
from exchange.store.postgres._connection import _Connections
from exchange.store.postgres._sql import (
    _INSERT_OBJECTS,
    _OBJECT_COLUMNS,
    _OUTBOX_CHANNEL,
    _PENDING_WITHIN,
    _RECORD_POSITION,
    _as_is,
    _has_nul,
    _lost,
    _unreachable,
    _unstorable,
)

# The head of the audit chain: (entries held, last leaf hash).
_Head = tuple[int, bytes]


async def _commit_submission(
    conn: Any, s: Submission, head: _Head
) -> tuple[list[Committed], _Head]:
    """One submission, after the audit chain's head was locked (``head``): its results
    and the head after its SUBMIT entries."""
    results = await _insert_objects(conn, s.submitter, s.objects, s.accepted_at, s.widen)
    # One SUBMIT entry per object of the bundle, in bundle order.
    committed, rows = submit_entries(
        s.submitter.partner_id, s.objects, results, s.rejected, s.accepted_at, head=head
    )
    return committed, await _insert_audit_rows(conn, head, rows)


def _what(s: Submission) -> str:
    return nul_in_bundle(s.objects, s.rejected) or "the bundle"


async def _insert_objects(
    conn: Any,
    submitter: Partner,
    objects: Sequence[tuple[ValidObject, Audience]],
    accepted_at: float,
    widen: Callable[[Audience, Audience], Audience],
) -> list[Committed]:
    held = await _held_versions(conn, {o.object_id for o, _ in objects})
    results: list[Committed] = []
    rows: list[tuple[object, ...]] = []
    # A bundle's objects mostly share one audience (and no labels): encoded once.
    encoded: dict[Audience, str] = {}
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
                obj.tlp.value,
                orjson.dumps(obj.labels).decode() if obj.labels else "[]",
                obj.revoked,
                obj.spec_version,
                obj.body,
                audience_json,
            )
        )
        versions.add(obj, key, audience)
        results.append(Committed(CommitOutcome.INSERTED, audience))
    if rows:
        columns = [list(column) for column in zip(*rows, strict=True)]
        await conn.execute(_INSERT_OBJECTS, *columns, submitter.partner_id, accepted_at)
        # Wakes the relay of whichever replica holds its lease, at commit.
        await conn.execute(f"NOTIFY {_OUTBOX_CHANNEL}")
    return results


async def _held_versions(conn: Any, ids: set[str]) -> HeldCopies:
    """What is held of ``ids``, per copy (``copy_key``), and what was erased of them
    from every copy."""
    wanted = sorted(ids)
    held = HeldCopies()
    # A registered partner's identity object (an SDO) belongs to that partner, even
    # before it submitted it: nobody else may publish it.
    for (identity,) in await conn.fetch(
        "SELECT identity_id FROM partners WHERE identity_id = ANY($1::text[])", wanted
    ):
        held.setdefault((str(identity), ""), Held()).creator = str(identity)
    latest: dict[CopyKey, str] = {}
    # A join with the ids, not "object_id = ANY($1)": the planner then probes the
    # (object_id, created_by_ref, version_key) index per id instead of scanning the
    # table, whatever its statistics say (a bundle of 1,000 was 3x slower on a freshly
    # filled table).
    for oid, otype, key, creator, revoked, audience, erased_at in await conn.fetch(
        "SELECT o.object_id, o.object_type, o.version_key, o.created_by_ref, o.revoked,"
        " o.audience::text, o.erased_at FROM unnest($1::text[]) AS w(id)"
        " JOIN objects o ON o.object_id = w.id ORDER BY o.seq",
        wanted,
    ):
        copy = copy_key(str(oid), str(otype), str(creator))
        entry = held.setdefault(copy, Held())
        entry.creator = str(creator)
        entry.keys.add(str(key))
        entry.revoked = entry.revoked or bool(revoked)
        if erased_at is not None:
            entry.erased = max(entry.erased or "", str(key))
        latest[copy] = str(audience)
    for oid, versions in await conn.fetch(
        "SELECT object_id, versions FROM erasures WHERE every_copy AND object_id = ANY($1::text[])",
        wanted,
    ):
        held.erased_from_every_copy(str(oid), newest_key(versions))
    for copy, audience in latest.items():
        held[copy].audience = Audience.from_json(audience)
    return held


class _ObjectRows(_Connections):
    """``ObjectStore`` on PostgreSQL."""

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
        """``group`` in one transaction (GroupCommits' ``run``), each submission in a
        savepoint; alone, each in one of its own, when the shared one failed."""
        outcomes: list[Outcome] | None = None
        if len(group) > 1:
            try:
                outcomes = await self._write(lambda conn: self._shared(conn, group))
                self._groups.transactions += 1
            except Exception:  # noqa: BLE001 - nothing was committed: each on its own below
                outcomes = None
        if outcomes is None:
            outcomes = []
            for submission in group:
                try:
                    outcomes.append(await self._alone(submission))
                    self._groups.transactions += 1
                except Exception as exc:  # noqa: BLE001 - that submission's caller gets it
                    outcomes.append(exc)
        if any(
            not isinstance(o, BaseException) and any(c.outcome is CommitOutcome.INSERTED for c in o)
            for o in outcomes
        ):
            self._outbox_added()
        return outcomes

    async def _alone(self, s: Submission) -> list[Committed]:
        async def run(conn: Any) -> list[Committed]:
            head = await _lock_audit_head(conn)
            committed, _ = await _commit_submission(conn, s, head)
            return committed

        return await self._write(run, lambda: _what(s))

    async def _shared(self, conn: Any, group: Sequence[Submission]) -> list[Outcome]:
        """The submissions of ``group`` in the transaction on ``conn``, each in a
        savepoint: one that fails is rolled back alone, and its outcome is the error
        it would have raised alone. An error that ends the connection ends them all."""
        head = await _lock_audit_head(conn)
        outcomes: list[Outcome] = []
        for s in group:
            retried = False
            while True:
                try:
                    async with conn.transaction():  # a savepoint
                        committed, after = await _commit_submission(conn, s, head)
                except Exception as exc:  # mapped for that submission's caller
                    if _lost(exc) or _unreachable(exc):
                        raise
                    if isinstance(exc, asyncpg.UniqueViolationError) and not retried:
                        # As _run does: the checks now see what was in the way.
                        retried = True
                        continue
                    outcomes.append(self._submission_error(exc, s))
                else:
                    head = after
                    outcomes.append(committed)
                break
        return outcomes

    def _submission_error(self, exc: BaseException, s: Submission) -> BaseException:
        """What ``_write`` would have raised for ``exc`` had ``s`` committed alone."""
        if isinstance(exc, asyncpg.UniqueViolationError):
            error: BaseException = AlreadyExists(f"already registered: {exc.detail or exc}")
        elif _unstorable(exc):
            error = InvalidArgument(unstorable_text(_what(s)))
        else:
            return self._failure(exc)
        error.__cause__ = exc
        return error

    async def submitters_of(self, object_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        # An id with a NUL character is held by nobody (the database cannot hold one).
        wanted = sorted({oid for oid in object_ids if not _has_nul(oid)})
        if not wanted:
            return {}
        # Every version of an SDO or SRO comes from its creator; an observable's copies
        # from each partner that submitted one.
        rows = await self._read(
            lambda conn: conn.fetch(
                # Joined with the ids, as in _held_versions: index probes per id.
                "SELECT DISTINCT o.object_id, o.submitter"
                " FROM unnest($1::text[]) AS w(id) JOIN objects o ON o.object_id = w.id",
                wanted,
            )
        )
        out: dict[str, set[str]] = {}
        for oid, submitter in rows:
            out.setdefault(str(oid), set()).add(str(submitter))
        return {oid: frozenset(submitters) for oid, submitters in out.items()}

    async def object_copies(self, object_id: str, version: str | None = None) -> list[StoredObject]:
        if _has_nul(object_id):
            return []  # nothing the database holds has one
        if version is None:
            # The latest version of each copy (one copy per creator).
            rows = await self._read(
                lambda conn: conn.fetch(
                    f"SELECT DISTINCT ON (o.created_by_ref) {_OBJECT_COLUMNS}"  # noqa: S608
                    " FROM objects o WHERE o.object_id = $1 AND o.erased_at IS NULL"
                    " ORDER BY o.created_by_ref, o.version_key DESC, o.seq DESC",
                    object_id,
                )
            )
        else:
            key = version_key(version)
            rows = await self._read(
                lambda conn: conn.fetch(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects o"  # noqa: S608
                    " WHERE o.object_id = $1 AND o.version_key = $2 AND o.erased_at IS NULL",
                    object_id,
                    key,
                )
            )
        # Each version under the audience it was stored (and delivered) with; copies in
        # the order they were accepted, as the SQLite store returns them.
        return sorted((stored_of(row, _as_is) for row in rows), key=lambda s: s.seq)

    async def published_objects(self, query: PublishedQuery) -> list[StoredObject]:
        if any(map(_has_nul, (*query.object_ids, *query.types, *query.versions))):
            return []  # nothing the database holds has one
        where, params = published_where(query, lambda n: f"${n}")
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_OBJECT_COLUMNS} FROM objects o WHERE {where}",  # noqa: S608
                *params,
            )
        )
        return [stored_of(row, _as_is) for row in rows]

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int, max_bytes: int | None = None) -> list[StoredObject]:
        if max_bytes is None:
            query = (
                f"SELECT {_OBJECT_COLUMNS} FROM outbox b JOIN objects o USING (seq)"  # noqa: S608
                " ORDER BY b.seq LIMIT $1"
            )
            args: tuple[int, ...] = (max(limit, 0),)
        else:
            query = _PENDING_WITHIN.format(columns=_OBJECT_COLUMNS, length="octet_length")
            args = (max(limit, 0), max_bytes)
        rows = await self._read(lambda conn: conn.fetch(query, *args))
        return [stored_of(r, _as_is) for r in rows]

    async def mark_published(
        self,
        seqs: Sequence[int],
        positions: Mapping[TopicPartition, int],
        set_aside: Mapping[int, str] | None = None,
    ) -> None:
        aside = {int(seq): set_aside_reason(reason) for seq, reason in (set_aside or {}).items()}
        published = [s for s in seqs if s not in aside]
        at = time.time()

        async def run(conn: Any) -> None:
            # Rows another process deleted already are simply not there any more.
            if published:
                await conn.execute(
                    "DELETE FROM outbox o USING unnest($1::bigint[]) AS d(seq) WHERE o.seq = d.seq",
                    published,
                )
            if aside:
                # Only rows still in the outbox: one another relay published is not set
                # aside after the fact.
                ordered = sorted(aside.items())
                await conn.execute(
                    "WITH gone AS (DELETE FROM outbox o USING unnest($1::bigint[]) AS d(seq)"
                    " WHERE o.seq = d.seq RETURNING o.seq)"
                    " INSERT INTO set_aside (seq, reason, at)"
                    " SELECT a.seq, a.reason, $3"
                    " FROM unnest($1::bigint[], $2::text[]) AS a(seq, reason)"
                    " JOIN gone USING (seq)"
                    " ON CONFLICT (seq) DO UPDATE SET reason = excluded.reason, at = excluded.at",
                    [seq for seq, _ in ordered],
                    [reason for _, reason in ordered],
                    at,
                )
            # In one order in every process, so that two writers cannot deadlock.
            rows = sorted((t, p, o) for (t, p), o in positions.items())
            if rows:
                await conn.executemany(_RECORD_POSITION, rows)

        await self._write(run)

    async def set_aside_rows(self, limit: int = 1000) -> list[SetAsideRow]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT s.seq, o.object_id, o.version, o.submitter, s.reason, s.at"
                " FROM set_aside s JOIN objects o USING (seq) ORDER BY s.seq LIMIT $1",
                max(limit, 0),
            )
        )
        return [set_aside_of(r) for r in rows]

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT topic, partition, next_offset FROM relay_positions"
                " WHERE topic = ANY($1::text[])",
                wanted,
            )
        )
        return {(str(topic), int(partition)): int(offset) for topic, partition, offset in rows}
