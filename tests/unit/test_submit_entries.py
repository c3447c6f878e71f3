"""``submit_entries`` (what ``commit_objects`` appends, built without an ``Event`` per
object) gives the very bytes, rows and receipts of the general path:
``bundle_submits`` + ``chain`` + ``with_receipts`` + ``audit_row``."""

from __future__ import annotations

import pytest

from exchange.audit._bounds import MAX_TEXT_CHARS
from exchange.model import Audience, Rejection, Tlp, ValidObject
from exchange.store import CommitOutcome, Committed
from exchange.store._common import (
    NO_PREVIOUS,
    audit_row,
    bundle_submits,
    chain,
    submit_entries,
    with_receipts,
)

CREATOR = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"


def obj(oid: str, index: int, version: str = "2026-01-01T00:00:00.000Z") -> ValidObject:
    return ValidObject(oid, "indicator", version, CREATOR, Tlp.GREEN, oid.encode(), index=index)


OUTCOMES = [
    CommitOutcome.INSERTED,
    CommitOutcome.DUPLICATE,
    CommitOutcome.NOT_CREATOR,
    CommitOutcome.REVOKED,
]


@pytest.mark.parametrize(
    ("submitter", "odd_id"),
    [
        ("ngo-1", "indicator--plain"),
        ("ngo-1", "indicator--" + "x" * MAX_TEXT_CHARS),  # cut in the entry
        ("ngo-1", "indicator--nul\x00inside"),  # spelled out in the entry
        ("ngo-\u00e9\u4e2d", 'indicator--\u00fcnicode\u2028"quoted"\\'),
        ("n" * (MAX_TEXT_CHARS + 5), "indicator--plain"),
    ],
)
@pytest.mark.parametrize("head", [(0, NO_PREVIOUS), (41, bytes(range(32)))])
def test_the_same_entries_as_the_general_path(
    submitter: str, odd_id: str, head: tuple[int, bytes]
) -> None:
    audience = Audience(Tlp.GREEN, submitter)
    objects = [(obj(f"indicator--{n}", n * 2), audience) for n in range(8)]
    objects.append((obj(odd_id, 5, version="2026-01-01T00:00:00Z"), audience))
    objects.append((obj(odd_id, 20), audience))
    results = [
        Committed(OUTCOMES[n % 4], audience if OUTCOMES[n % 4] is CommitOutcome.INSERTED else None)
        for n in range(len(objects))
    ]
    rejected = [
        Rejection("indicator--r1", "pattern", "a pattern", 3, "v1"),
        Rejection("indicator--r0", "id", "an id", 0, ""),  # same index as an object
        Rejection(odd_id, "type", "x" * 5_000, 30, odd_id),
    ]
    at = 1_764_000_000.123456789

    submits = bundle_submits(submitter, objects, results, rejected, at)
    entries = chain([event for _, event in submits], *head)
    expected_results = with_receipts(results, submits, entries)
    expected_rows = [audit_row(entry) for entry in entries]

    got_results, got_rows = submit_entries(submitter, objects, results, rejected, at, head=head)
    assert got_rows == expected_rows
    assert got_results == expected_results
