"""Erasure in PostgreSQL: bodies removed in one transaction (after the audit chain's
head is locked, like every commit) with the outbox rows, the erasure kept for the
relay and an ERASE audit entry. The dead row versions that held the bodies stay in the
table's pages until VACUUM reclaims them (docs/erasure.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from exchange.audit.entries import erased
from exchange.bus import TopicPartition
from exchange.model import EraseReason, Erasure
from exchange.store._erasure import (
    ERASURE_COLUMNS,
    ErasableRow,
    ReferrerRow,
    by_copy,
    erasure_of_row,
    erasure_values,
    newest_key,
    referrers,
)
from exchange.store.postgres._audit import _append_audit, _lock_audit_head
from exchange.store.postgres._connection import _Connections
from exchange.store.postgres._sql import _OUTBOX_CHANNEL, _RECORD_POSITION, _has_nul

_INSERT_ERASURE = (
    "INSERT INTO erasures (object_id, object_type, submitter, created_by_ref, versions,"
    " reason, erased_by, erased_at, referenced_by, every_copy, audit_index)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, -1) RETURNING erasure_id"
)


async def _erase(
    conn: Any,
    object_id: str,
    copy_of: str | None,
    *,
    by: str,
    reason: EraseReason,
    at: float,
    latest_seq: int | None,
) -> list[Erasure]:
    size, previous = await _lock_audit_head(conn)
    query = (
        "SELECT seq, object_type, created_by_ref, submitter, version, audience::text, body"
        " FROM objects WHERE object_id = $1 AND erased_at IS NULL"
    )
    args: list[str] = [object_id]
    if copy_of is not None:
        # By its identity, the second column of the (object_id, created_by_ref, ...)
        # index: a partner asking for an id it holds no copy of costs one probe, however
        # many versions others hold (what it may not see must not show in the time).
        query += " AND created_by_ref = (SELECT identity_id FROM partners WHERE partner_id = $2)"
        args.append(copy_of)
    rows = [
        ErasableRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), bytes(r[6]))
        for r in await conn.fetch(query + " ORDER BY version_key, seq", *args)
    ]
    if not rows or (latest_seq is not None and max(r.seq for r in rows) != latest_seq):
        return []
    referring = referrers(
        (
            ReferrerRow(int(r[0]), str(r[1]), str(r[2]))
            for r in await conn.fetch(
                "SELECT o.seq, o.object_id, o.audience::text FROM object_refs f"
                " JOIN objects o USING (seq) WHERE f.ref_id = $1 AND o.erased_at IS NULL"
                " ORDER BY o.seq",
                object_id,
            )
        ),
        object_id,
    )
    done: list[Erasure] = []
    for copy_rows in by_copy(rows, object_id).values():
        seqs = [row.seq for row in copy_rows]
        await conn.execute(
            "UPDATE objects SET body = '\\x'::bytea, erased_at = $1 WHERE seq = ANY($2::bigint[])",
            at,
            seqs,
        )
        # Never published now: the relay only publishes the erasure (its tombstones).
        await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", seqs)
        erasure, values = erasure_values(
            object_id, copy_rows, by=by, reason=reason, at=at, referenced_by=referring
        )
        erasure_id = await conn.fetchval(_INSERT_ERASURE, *values, copy_of is None)
        (entry,) = await _append_audit(conn, size, previous, [erased(erasure)])
        size, previous = entry.index + 1, entry.leaf_hash
        await conn.execute(
            "UPDATE erasures SET audit_index = $1 WHERE erasure_id = $2", entry.index, erasure_id
        )
        row = await conn.fetchrow(
            f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE erasure_id = $1",  # noqa: S608
            erasure_id,
        )
        done.append(erasure_of_row(row))
    # Wakes the relay of whichever replica holds its lease, at commit.
    await conn.execute(f"NOTIFY {_OUTBOX_CHANNEL}")
    return done


class _ErasureRows(_Connections):
    """Erasure on PostgreSQL (``ObjectStore.erase_object`` and the relay's side of it)."""

    async def erase_object(
        self,
        object_id: str,
        *,
        by: str,
        reason: EraseReason,
        at: float,
        copy_of: str | None,
        latest_seq: int | None = None,
    ) -> list[Erasure]:
        if _has_nul(object_id) or _has_nul(copy_of or ""):
            return []  # nothing the database holds has one
        done = await self._write(
            lambda conn: _erase(
                conn, object_id, copy_of, by=by, reason=reason, at=at, latest_seq=latest_seq
            )
        )
        if done:
            self._outbox_added()
        return done

    async def erasures_of(self, object_id: str, copy_of: str | None = None) -> list[Erasure]:
        if _has_nul(object_id) or _has_nul(copy_of or ""):
            return []
        query = f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE object_id = $1"  # noqa: S608
        args = [object_id]
        if copy_of is not None:
            query += " AND submitter = $2"
            args.append(copy_of)
        rows = await self._read(lambda conn: conn.fetch(query + " ORDER BY erasure_id", *args))
        return [erasure_of_row(r) for r in rows]

    async def erasure(self, erasure_id: int) -> Erasure | None:
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE erasure_id = $1",  # noqa: S608
                erasure_id,
            )
        )
        return None if row is None else erasure_of_row(row)

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {ERASURE_COLUMNS} FROM erasures WHERE NOT published"  # noqa: S608
                " ORDER BY erasure_id LIMIT $1",
                max(limit, 0),
            )
        )
        return [erasure_of_row(r) for r in rows]

    async def mark_erasures_published(
        self, erasure_ids: Sequence[int], positions: Mapping[TopicPartition, int]
    ) -> None:
        async def run(conn: Any) -> None:
            await conn.execute(
                "UPDATE erasures SET published = true WHERE erasure_id = ANY($1::bigint[])",
                [int(i) for i in erasure_ids],
            )
            rows = [(t, p, o) for (t, p), o in positions.items()]
            if rows:
                await conn.executemany(_RECORD_POSITION, rows)

        await self._write(run)

    async def erased_copies(self, after_id: int) -> list[tuple[int, str, str, str]]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT erasure_id, object_id, submitter, versions FROM erasures"
                " WHERE erasure_id > $1 ORDER BY erasure_id",
                after_id,
            )
        )
        return [(int(i), str(o), str(s), newest_key(v)) for i, o, s, v in rows]
