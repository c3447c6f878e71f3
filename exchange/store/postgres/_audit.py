"""The audit log in PostgreSQL: one hash chain appended under a lock on its head;
checkpoints, the bus mirror's position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exchange.audit.entries import AuditEntry, AuditQuery, Event
from exchange.errors import Unavailable
from exchange.store import AuditRow, SignedCheckpoint
from exchange.store._common import (
    NO_PREVIOUS,
    AuditValues,
    audit_row,
    chain,
    checkpoint_of,
    listed_rows,
)
from exchange.store.postgres._connection import _Connections
from exchange.store.postgres._sql import (
    _AUDIT_COLUMNS,
    _CHECKPOINT_COLUMNS,
    _INSERT_AUDIT,
    _audit_row,
    _has_nul,
)

# -- the audit chain (inside a write transaction) -------------------------------------------


async def _lock_audit_head(conn: Any) -> tuple[int, bytes]:
    """Lock the head of the audit chain until this transaction ends (other appenders,
    in any process, wait here) and return it: (entries held, last leaf hash).

    ``commit_objects`` calls this first, before it inserts any object, and this is
    what keeps sequence numbers in commit order: a sequence hands out numbers when
    rows are inserted, not when they commit, so a transaction that took seq 10 could
    commit after one that took 11, and a subscriber that already saw 11 would drop
    10 as a repeat (a lost delivery). Under this lock, the transaction that takes the
    next numbers starts only once the previous one has committed (and is visible).
    Its checks (creator, duplicate, revoked) then also see every version committed
    before, whichever process wrote it."""
    row = await conn.fetchrow("SELECT size, leaf_hash FROM audit_head WHERE id = 1 FOR UPDATE")
    if row is None:
        return 0, NO_PREVIOUS
    return int(row[0]), bytes(row[1])


async def _insert_audit_rows(
    conn: Any, head: tuple[int, bytes], rows: Sequence[AuditValues]
) -> tuple[int, bytes]:
    """Insert entries chained from ``head`` (``_lock_audit_head``) and move the head;
    the head after them."""
    if not rows:
        return head
    await conn.execute(_INSERT_AUDIT, *(list(column) for column in zip(*rows, strict=True)))
    last = rows[-1]
    await conn.execute(
        "UPDATE audit_head SET size = $1, leaf_hash = $2 WHERE id = 1", last[0] + 1, last[8]
    )
    return last[0] + 1, last[8]


async def _append_audit(
    conn: Any, size: int, previous: bytes, events: Sequence[Event]
) -> list[AuditEntry]:
    """Append ``events`` after the head ``_lock_audit_head`` returned, hashing them in
    this transaction, and move the head."""
    entries = chain(events, size, previous)
    if not entries:
        return entries
    rows = [audit_row(entry) for entry in entries]
    await conn.execute(_INSERT_AUDIT, *(list(column) for column in zip(*rows, strict=True)))
    if listed := listed_rows(entries):
        object_ids, indexes = zip(*listed, strict=True)
        await conn.execute(
            "INSERT INTO audit_objects (object_id, idx)"
            " SELECT * FROM unnest($1::text[], $2::bigint[])",
            list(object_ids),
            list(indexes),
        )
    last = entries[-1]
    await conn.execute(
        "UPDATE audit_head SET size = $1, leaf_hash = $2 WHERE id = 1",
        last.index + 1,
        last.leaf_hash,
    )
    return entries


def _nul_in_events(events: Sequence[Event]) -> str:
    """Which column of which entry holds a NUL character, in words."""
    for n, event in enumerate(events):
        for column in ("actor", "partner", "object_id", "owner"):
            if _has_nul(getattr(event, column)):
                return f"audit entry {n + 1} of {len(events)} ({event.action.value}): its {column}"
    return "an audit entry"


class _AuditRows(_Connections):
    """``AuditStore`` on PostgreSQL."""

    async def audit_public_key(self, public_key: bytes) -> bytes:
        async def run(conn: Any) -> bytes:
            await conn.execute(
                "INSERT INTO audit_key (id, public_key) VALUES (1, $1) ON CONFLICT DO NOTHING",
                public_key,
            )
            return bytes(await conn.fetchval("SELECT public_key FROM audit_key WHERE id = 1"))

        return await self._write(run)

    async def append_audit(self, events: Sequence[Event]) -> list[AuditEntry]:
        if not events:
            return []

        async def run(conn: Any) -> list[AuditEntry]:
            size, previous = await _lock_audit_head(conn)
            return await _append_audit(conn, size, previous, events)

        return await self._write(run, lambda: _nul_in_events(events))

    async def audit_size(self) -> int:
        size = await self._read(
            lambda conn: conn.fetchval("SELECT coalesce(max(idx) + 1, 0) FROM audit")
        )
        return int(size)

    async def audit_entries(self, query: AuditQuery, *, only_of: str = "") -> list[AuditEntry]:
        args: list[object] = [query.after_index]
        where = ["idx > $1"]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if query.partner:
            # "partner <> ''" lets PostgreSQL use the partial index on partner.
            p = arg(query.partner)
            where.append(f"(actor = {p} OR (partner = {p} AND partner <> ''))")
        if query.object_id:
            # Entries naming the object, and entries listing it (DELIVER).
            o = arg(query.object_id)
            listing = f"SELECT idx FROM audit_objects WHERE object_id = {o}"  # noqa: S608
            where.append(f"(object_id = {o} OR idx IN ({listing}))")
        if query.action:
            where.append(f"action = {arg(query.action)}")
        if query.since is not None:
            where.append(f"at >= {arg(float(query.since))}")
        if query.until is not None:
            where.append(f"at < {arg(float(query.until))}")
        if only_of:
            o = arg(only_of)
            where.append(f"(actor = {o} OR owner = {o})")
        limit = arg(max(query.limit, 0))
        # Only fixed clauses above; every value is a parameter.
        sql = f"SELECT idx, data, leaf_hash FROM audit WHERE {' AND '.join(where)}"  # noqa: S608
        sql += f" ORDER BY idx LIMIT {limit}"

        rows = await self._read(lambda conn: conn.fetch(sql, *args))
        out: list[AuditEntry] = []
        for idx, data, leaf in rows:
            try:
                _, _, event = Event.decode(data)
            except (ValueError, KeyError, TypeError):
                raise Unavailable(
                    f"audit entry {idx} is damaged (its bytes are not an entry); run"
                    " `exchange audit verify` on the database"
                ) from None
            out.append(AuditEntry(int(idx), event, bytes(data), bytes(leaf)))
        return out

    async def audit_rows(self, start: int, limit: int) -> list[AuditRow]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608
                " WHERE idx >= $1 ORDER BY idx LIMIT $2",
                start,
                max(limit, 0),
            )
        )
        return [_audit_row(r) for r in rows]

    async def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT leaf_hash FROM audit WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                start,
                end,
            )
        )
        return [bytes(leaf) for (leaf,) in rows]

    async def audit_unindexed(self, listed: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        if not listed:
            return []
        object_ids, indexes = zip(*listed, strict=True)
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT l.object_id, l.idx FROM unnest($1::text[], $2::bigint[])"
                " AS l(object_id, idx) WHERE NOT EXISTS (SELECT 1 FROM audit_objects a"
                " WHERE a.object_id = l.object_id AND a.idx = l.idx)",
                list(object_ids),
                list(indexes),
            )
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    async def add_checkpoint(self, checkpoint: SignedCheckpoint) -> None:
        async def run(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO audit_checkpoints (tree_size, note, signature)"
                " VALUES ($1, $2, $3) ON CONFLICT (tree_size) DO NOTHING",
                checkpoint.tree_size,
                checkpoint.note,
                checkpoint.signature,
            )

        await self._write(run)

    async def checkpoints(self) -> list[SignedCheckpoint]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size"
            )
        )
        return [checkpoint_of(r) for r in rows]

    async def latest_checkpoint(self) -> SignedCheckpoint | None:
        row = await self._read(
            lambda conn: conn.fetchrow(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints"  # noqa: S608
                " ORDER BY tree_size DESC LIMIT 1"
            )
        )
        return None if row is None else checkpoint_of(row)

    async def audit_mirror_position(self) -> int:
        position = await self._read(
            lambda conn: conn.fetchval("SELECT next_index FROM audit_mirror WHERE id = 1")
        )
        return int(position)

    async def set_audit_mirror_position(self, index: int) -> None:
        async def run(conn: Any) -> None:
            await conn.execute("UPDATE audit_mirror SET next_index = $1 WHERE id = 1", index)

        await self._write(run)
