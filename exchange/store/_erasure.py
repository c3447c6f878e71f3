"""What both stores decide the same way about erasure: which rows make up which copy,
what an erasure records of them (versions, audiences, digests of the bodies, never the
bodies), which objects refer to an erased one, and how an erasure is kept in a row.

Pure functions: each store reads the rows and writes what these return inside its
own transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from exchange.audit.entries import body_digest
from exchange.model import Audience, ErasedVersion, EraseReason, Erasure, version_key
from exchange.store._common import CopyKey, copy_key

__all__ = [
    "MAX_REFERRERS",
    "REFERRING_TYPES",
    "ErasableRow",
    "ReferrerRow",
    "by_copy",
    "erasure_of_row",
    "erasure_values",
    "newest_key",
    "referrers",
]

# The types whose objects refer to others by id (sighting_of_ref, source_ref and
# target_ref, object_refs): what an erasure notice lists as referring to the erased one.
REFERRING_TYPES = ("sighting", "relationship", "report", "note", "opinion", "grouping")
# A notice lists at most this many (the newest first): it stays small whatever refers.
MAX_REFERRERS = 1000


class ErasableRow(NamedTuple):
    """A stored version about to be erased, as selected (by seq)."""

    seq: int
    object_type: str
    created_by_ref: str
    submitter: str
    version: str
    audience: str  # Audience.to_json
    body: bytes


class ReferrerRow(NamedTuple):
    """A stored version that may refer to an erased object (its body names the id)."""

    seq: int
    object_id: str
    audience: str


def by_copy(rows: Iterable[ErasableRow], object_id: str) -> dict[CopyKey, list[ErasableRow]]:
    """The rows of each copy (``copy_key``), in the order given (by seq)."""
    copies: dict[CopyKey, list[ErasableRow]] = {}
    for row in rows:
        copies.setdefault(copy_key(object_id, row.object_type, row.created_by_ref), []).append(row)
    return copies


def referrers(rows: Iterable[ReferrerRow], erased_id: str) -> tuple[tuple[str, Audience], ...]:
    """The objects among ``rows`` that refer to ``erased_id``: the latest version's
    audience of each (rows by seq), newest first, at most MAX_REFERRERS."""
    latest: dict[str, str] = {}
    for row in rows:
        if row.object_id != erased_id:
            latest.pop(row.object_id, None)  # re-inserted: newest last
            latest[row.object_id] = row.audience
    newest = list(latest.items())[::-1][:MAX_REFERRERS]
    return tuple((oid, Audience.from_json(audience)) for oid, audience in newest)


def erasure_values(
    object_id: str,
    rows: Sequence[ErasableRow],
    *,
    by: str,
    reason: EraseReason,
    at: float,
    referenced_by: tuple[tuple[str, Audience], ...],
) -> tuple[Erasure, tuple[Any, ...]]:
    """The erasure of one copy's ``rows`` (erasure_id still 0: the store assigns it) and
    the values of its row in ``erasures`` after the id: object_id, object_type,
    submitter, created_by_ref, versions, reason, erased_by, erased_at, referenced_by."""
    first = rows[0]
    versions = tuple(
        ErasedVersion(row.version, Audience.from_json(row.audience), body_digest(row.body))
        for row in rows
    )
    erasure = Erasure(
        erasure_id=0,
        object_id=object_id,
        object_type=first.object_type,
        submitter=first.submitter,
        created_by_ref=first.created_by_ref,
        versions=versions,
        reason=reason,
        erased_by=by,
        erased_at=at,
        referenced_by=referenced_by,
    )
    values = (
        object_id,
        first.object_type,
        first.submitter,
        first.created_by_ref,
        orjson.dumps(
            [[v.version, v.audience.to_json().decode(), v.digest] for v in versions]
        ).decode(),
        reason.value,
        by,
        at,
        orjson.dumps([[oid, a.to_json().decode()] for oid, a in referenced_by]).decode(),
    )
    return erasure, values


# The columns erasure_of_row reads, in order.
ERASURE_COLUMNS = (
    "erasure_id, object_id, object_type, submitter, created_by_ref, versions, reason,"
    " erased_by, erased_at, referenced_by, audit_index"
)


def erasure_of_row(row: Sequence[Any]) -> Erasure:
    (erasure_id, object_id, object_type, submitter, creator, versions, reason, by, at) = row[:9]
    referenced_by, audit_index = row[9:]
    return Erasure(
        erasure_id=int(erasure_id),
        object_id=str(object_id),
        object_type=str(object_type),
        submitter=str(submitter),
        created_by_ref=str(creator),
        versions=tuple(
            ErasedVersion(str(v), Audience.from_json(a), str(d))
            for v, a, d in orjson.loads(versions)
        ),
        reason=EraseReason(str(reason)),
        erased_by=str(by),
        erased_at=float(at),
        referenced_by=tuple(
            (str(oid), Audience.from_json(a)) for oid, a in orjson.loads(referenced_by)
        ),
        audit_index=int(audit_index),
    )


def newest_key(versions: str | bytes) -> str:
    """The version key of the newest version in an erasure row's ``versions``."""
    return max(version_key(str(v)) for v, _, _ in orjson.loads(versions))
