"""Retention's read in PostgreSQL: the copies due for erasure by age or
``valid_until`` (exchange/retention.py decides; this narrows the scan to the copies
that may be)."""

from __future__ import annotations

from typing import Any

from exchange.store import RetentionCandidate, RetentionQuery
from exchange.store._common import candidate_of
from exchange.store.postgres._connection import _Connections

# An indicator's valid_until, read from its stored body (the JSON bytes; never an
# erased row's: its body is gone). CASE keeps the cast from running on any other row.
_VALID_UNTIL = (
    "CASE WHEN o.erased_at IS NULL AND o.object_type = 'indicator'"
    " THEN convert_from(o.body, 'UTF8')::json ->> 'valid_until' END"
)


def _statement(query: RetentionQuery) -> tuple[str, list[Any]] | None:
    params: list[Any] = [query.after_seq]

    def param(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    due: list[str] = []
    for tlp, before in sorted(query.tlp_accepted_before.items()):
        due.append(
            f"(o.tlp = {param(tlp.value)}::text"
            f" AND o.accepted_at <= {param(before)}::double precision)"
        )
    for community, before in sorted(query.community_accepted_before.items()):
        due.append(
            f"(o.accepted_at <= {param(before)}::double precision"
            f" AND (o.audience -> 'communities') ? {param(community)}::text)"
        )
    if query.valid_until_before is not None:
        due.append(f"substr({_VALID_UNTIL}, 1, 19) <= {param(query.valid_until_before)}::text")
    if not due:
        return None
    limit = param(max(query.limit, 0))
    sql = (
        "SELECT o.seq, o.object_id, o.submitter, o.object_type, o.accepted_at, o.tlp,"  # noqa: S608
        f" o.audience::text, {_VALID_UNTIL} FROM objects o"
        f" WHERE o.seq > $1 AND o.erased_at IS NULL AND ({' OR '.join(due)})"
        # The copy's latest version (an SCO's copies are one per submitter; an SDO's
        # every version comes from its creator, one partner).
        " AND o.seq = (SELECT max(l.seq) FROM objects l"
        " WHERE l.object_id = o.object_id AND l.submitter = o.submitter)"
        f" ORDER BY o.seq LIMIT {limit}"
    )
    return sql, params


class _RetentionRows(_Connections):
    """``RetentionStore`` on PostgreSQL."""

    async def retention_candidates(self, query: RetentionQuery) -> list[RetentionCandidate]:
        statement = _statement(query)
        if statement is None:
            return []
        sql, params = statement
        rows = await self._read(lambda conn: conn.fetch(sql, *params))
        return [candidate_of(row) for row in rows]
