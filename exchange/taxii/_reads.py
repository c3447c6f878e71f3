"""Reading a collection: the query a request asks for, pages over the store's sequence
with the policy asked for every version, and what each read records in the audit log."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from exchange._subscription_request import MAX_FILTER_VALUES
from exchange.audit.entries import Action, Event, body_digest
from exchange.audit.recorder import AuditRecorder
from exchange.model import Partner, StoredObject
from exchange.store import PublishedQuery, Store
from exchange.taxii._collections import TaxiiCollection
from exchange.taxii._errors import TaxiiError
from exchange.taxii._paging import accepted_from, date_added, decode_next, parse_limit

__all__ = ["Page", "lookup_recorded", "read_page", "requested"]

_MATCHES = ("id", "type", "version", "spec_version")
_ID = re.compile(r"[a-z0-9-]{3,250}--[0-9a-fA-F-]{36}", re.ASCII)
_TYPE = re.compile(r"[a-z0-9-]{3,250}", re.ASCII)
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z", re.ASCII)
# Rows one store query reads, and the queries one page may take when the policy hides
# most of them; the page then ends early (with more = true), which TAXII allows.
_SCAN_ROWS = 1000
_MAX_SCANS = 8


def _bad(description: str) -> TaxiiError:
    return TaxiiError(400, "Bad Request", description)


def _values(
    query: Mapping[str, str], name: str, pattern: re.Pattern[str] | None
) -> tuple[str, ...]:
    raw = query.get(f"match[{name}]")
    if raw is None:
        return ()
    values = tuple(v.strip() for v in raw.split(","))
    if len(values) > MAX_FILTER_VALUES:
        raise _bad(
            f"match[{name}] holds {len(values)} values, over the {MAX_FILTER_VALUES} allowed"
        )
    for value in values:
        if pattern is not None and not pattern.fullmatch(value):
            raise _bad(f"match[{name}] holds {value[:80]!r}, which is not a valid {name}")
    return values


def requested(
    query: Mapping[str, str], *, object_id: str | None = None, default_version: str = "last"
) -> PublishedQuery:
    """The store query of a request's parameters; 400 naming the parameter otherwise."""
    for key in query:
        if key.startswith("match[") and key[6:-1] not in _MATCHES:
            raise _bad(
                f"{key[:60]} is not a filter this server supports (match[id], match[type],"
                " match[version], match[spec_version])"
            )
    versions = _values(query, "version", None) or (default_version,)
    for value in versions:
        if value not in ("first", "last", "all") and not _VERSION.fullmatch(value):
            raise _bad(
                f"match[version] holds {value[:80]!r}; give first, last, all or a version"
                " timestamp such as 2026-01-01T00:00:00.000Z"
            )
    spec_versions = _values(query, "spec_version", None)
    if any(v not in ("2.0", "2.1") for v in spec_versions):
        raise _bad("match[spec_version] may hold 2.0 and 2.1; this exchange holds STIX 2.1")
    ids = (object_id,) if object_id is not None else _values(query, "id", _ID)
    added_after = query.get("added_after")
    next_token = query.get("next")
    return PublishedQuery(
        after_seq=decode_next(next_token) if next_token is not None else 0,
        limit=parse_limit(query.get("limit")),
        object_ids=ids,
        types=_values(query, "type", _TYPE),
        spec_versions=spec_versions,
        versions=versions,
        accepted_from=accepted_from(added_after) if added_after is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[StoredObject]
    # The sequence the next page starts after, when there may be more.
    next_seq: int | None

    def headers(self) -> dict[str, str]:
        if not self.items:
            return {}
        return {
            "X-TAXII-Date-Added-First": date_added(self.items[0].accepted_at),
            "X-TAXII-Date-Added-Last": date_added(self.items[-1].accepted_at),
        }


async def read_page(
    store: Store, partner: Partner, collection: TaxiiCollection, query: PublishedQuery
) -> Page:
    """One page: at most ``query.limit`` versions ``partner`` may see in ``collection``,
    in acceptance order; usually one store query (and one for the partner's
    registration time)."""
    # A partner is registered with its first credential (RegistryStore.add_partner).
    credentials = await store.list_credentials(partner.partner_id)
    registered_at = min((c.created_at for c in credentials), default=0.0)
    items: list[StoredObject] = []
    after = query.after_seq
    # Rows are read in chunks of _SCAN_ROWS whatever the limit, and a full page says
    # `more` only once one more version the partner may see was found: `more` and
    # `next` must not tell a version the policy hid exists (a limit=1 page over
    # match[id] of someone else's object would).
    scan = replace(query, limit=max(query.limit, _SCAN_ROWS))
    for _ in range(_MAX_SCANS):
        rows = await store.published_objects(replace(scan, after_seq=after))
        for stored in rows:
            if collection.holds(partner, stored, registered_at):
                if len(items) == query.limit:
                    return _trimmed(items, items[-1].seq)
                items.append(stored)
            after = stored.seq
        if len(rows) < scan.limit:
            return Page(items, None)
    # _MAX_SCANS chunks read, mostly hidden: the page ends here, maybe shorter (as TAXII
    # allows), and the next one goes on after what was read.
    return _trimmed(items, after) if len(items) == query.limit else Page(items, after)


def _trimmed(items: list[StoredObject], after: int) -> Page:
    """A full page ends before the last run of versions sharing one ``date_added`` (when
    it is not the whole page), so that a client paging by ``added_after`` with the
    X-TAXII-Date-Added-Last header skips nothing; ``next`` is exact either way."""
    # date_added's microseconds, compared as numbers (formatting each cost a third of a page).
    last = int(items[-1].accepted_at * 1_000_000)
    keep = len(items)
    while keep > 0 and int(items[keep - 1].accepted_at * 1_000_000) == last:
        keep -= 1
    if keep == 0:
        return Page(items, after)
    return Page(items[:keep], items[keep - 1].seq)


async def lookup_recorded(
    recorder: AuditRecorder, partner: Partner, object_id: str, found: list[StoredObject]
) -> None:
    """A LOOKUP entry, as GetObject records one: what was asked, and whether it was
    found (what was asked, not what is held, when it was not)."""
    event = Event(
        Action.LOOKUP,
        partner.partner_id,
        time.time(),
        object_id=object_id,
        version=found[-1].obj.version if found else "",
        digest=body_digest(found[-1].obj.body) if found else "",
        owner=found[-1].submitter if found else "",
        detail={"found": bool(found), "channel": "taxii"},
    )
    await recorder.record([event])
