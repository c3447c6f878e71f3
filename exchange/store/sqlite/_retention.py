"""Retention's read in SQLite: the copies due for erasure by age or ``valid_until``
(exchange/retention.py decides; this narrows the scan to the copies that may be)."""

from __future__ import annotations

import sqlite3
from typing import Any

from exchange.store import RetentionCandidate, RetentionQuery
from exchange.store._common import candidate_of
from exchange.store.sqlite._connection import _Connections

# An indicator's valid_until, read from its stored body (never an erased row's: its
# body is gone).
_VALID_UNTIL = (
    "CASE WHEN o.erased_at IS NULL AND o.object_type = 'indicator'"
    " THEN json_extract(o.body, '$.valid_until') END"
)


def _candidates(conn: sqlite3.Connection, query: RetentionQuery) -> list[RetentionCandidate]:
    due: list[str] = []
    params: list[Any] = [query.after_seq]
    for tlp, before in sorted(query.tlp_accepted_before.items()):
        due.append("(o.tlp = ? AND o.accepted_at <= ?)")
        params += [tlp.value, before]
    for community, before in sorted(query.community_accepted_before.items()):
        due.append(
            "(o.accepted_at <= ? AND EXISTS (SELECT 1 FROM json_each(o.audience,"
            " '$.communities') c WHERE c.value = ?))"
        )
        params += [before, community]
    if query.valid_until_before is not None:
        due.append(f"substr({_VALID_UNTIL}, 1, 19) <= ?")
        params.append(query.valid_until_before)
    if not due:
        return []
    params.append(max(query.limit, 0))
    rows = conn.execute(
        f"SELECT o.seq, o.object_id, o.submitter, o.object_type, o.accepted_at, o.tlp,"  # noqa: S608
        f" o.audience, {_VALID_UNTIL} FROM objects o"
        f" WHERE o.seq > ? AND o.erased_at IS NULL AND ({' OR '.join(due)})"
        # The copy's latest version (an SCO's copies are one per submitter; an SDO's
        # every version comes from its creator, one partner).
        " AND o.seq = (SELECT max(l.seq) FROM objects l"
        " WHERE l.object_id = o.object_id AND l.submitter = o.submitter)"
        " ORDER BY o.seq LIMIT ?",
        params,
    ).fetchall()
    return [candidate_of(row) for row in rows]


class _RetentionRows(_Connections):
    """``RetentionStore`` on SQLite."""

    async def retention_candidates(self, query: RetentionQuery) -> list[RetentionCandidate]:
        return await self._read(lambda conn: _candidates(conn, query))
