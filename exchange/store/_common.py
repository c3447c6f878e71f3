"""What both stores decide the same way, whatever the database: which objects of a
bundle are stored (creator, duplicate, revoked; observables per submitter), the
SUBMIT entries of a bundle in bundle order, how audit entries chain, and the words
of their errors.

Pure functions and plain objects: each store reads what they need and writes what
they return inside its own transaction.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from exchange_protocol.merkle import leaf_hash

from exchange.audit.entries import AuditEntry, Event, body_digest, encode_submit, submitted
from exchange.errors import InvalidArgument
from exchange.model import (
    Audience,
    Credential,
    CredentialKind,
    ObjectOutcome,
    Partner,
    PartnerKind,
    Receipt,
    Rejection,
    Role,
    StoredObject,
    Tlp,
    ValidObject,
    version_key,
)
from exchange.stix._explain import printable, short
from exchange.stix.vocab import is_observable
from exchange.store import (
    CommitOutcome,
    Committed,
    PublishedQuery,
    RetentionCandidate,
    SetAsideRow,
    SignedCheckpoint,
    refusal,
)

__all__ = [
    "NO_PREVIOUS",
    "AuditValues",
    "CopyKey",
    "Held",
    "HeldCopies",
    "OutboxListeners",
    "audit_row",
    "bundle_submits",
    "candidate_of",
    "chain",
    "check_first_credential",
    "checkpoint_of",
    "community_missing",
    "copy_key",
    "credential_bound",
    "credential_id_taken",
    "credential_of",
    "listed_rows",
    "newer_schema",
    "not_a_member",
    "nothing_to_commit",
    "nul_in_bundle",
    "partner_of",
    "published_where",
    "set_aside_of",
    "set_aside_reason",
    "stored_of",
    "submit_entries",
    "submit_event",
    "unknown_partner",
    "unstorable_text",
    "with_receipts",
]

# The previous leaf hash of the first entry.
NO_PREVIOUS = bytes(32)

# (object id, creator for an observable, else ""): one copy of an object.
CopyKey = tuple[str, str]


def copy_key(object_id: str, object_type: str, creator: str) -> CopyKey:
    """Which copy of ``object_id`` a version belongs to. An SDO or SRO has one copy,
    its creator's. An observable (SCO) names no creator and its id is derived from its
    value, so every partner that submits one holds a copy of its own (``creator`` is
    then the submitter's identity): another partner's copy never makes a submission a
    duplicate or someone else's, whatever the caller may see of it."""
    return (object_id, creator if is_observable(object_type) else "")


class Held:
    """What the store holds of one copy of an object (``copy_key``): its creator, its
    version keys, whether it was revoked, and the audience of its latest version
    (by acceptance)."""

    __slots__ = ("audience", "creator", "erased", "keys", "revoked")

    def __init__(self) -> None:
        self.creator: str | None = None
        self.keys: set[str] = set()
        self.revoked = False
        # The audience of the latest version (by acceptance), None if none is held.
        self.audience: Audience | None = None
        # The version key of the newest erased version, None if none was erased.
        self.erased: str | None = None

    def refuses(self, obj: ValidObject, key: str) -> CommitOutcome | None:
        """Why ``obj`` (version key ``key``) is not stored, or None: store it."""
        if self.creator is not None and self.creator != obj.created_by_ref:
            return CommitOutcome.NOT_CREATOR
        # Before DUPLICATE: a replay of an erased version must be told it is refused,
        # not that it is held (it is not, and will not be).
        if self.erased is not None and key <= self.erased:
            return CommitOutcome.ERASED
        if key in self.keys:
            return CommitOutcome.DUPLICATE
        if self.revoked:
            return CommitOutcome.REVOKED
        return None

    def add(self, obj: ValidObject, key: str, audience: Audience) -> None:
        """``obj`` was stored (in this transaction) with ``audience``."""
        self.creator = obj.created_by_ref
        self.keys.add(key)
        self.revoked = self.revoked or obj.revoked
        self.audience = audience


class HeldCopies(dict[CopyKey, Held]):
    """What is held of a bundle's ids, per copy; and, per id, the newest version key
    the operator erased from every copy (a court order, a data subject's request): no
    partner's copy takes a version up to it again, a copy it did not hold included."""

    def __init__(self) -> None:
        super().__init__()
        self.erased_everywhere: dict[str, str] = {}

    def erased_from_every_copy(self, object_id: str, key: str) -> None:
        self.erased_everywhere[object_id] = max(self.erased_everywhere.get(object_id, ""), key)

    def of(self, obj: ValidObject) -> Held:
        """The copy ``obj`` would be a version of."""
        versions = self.setdefault(
            copy_key(obj.object_id, obj.object_type, obj.created_by_ref), Held()
        )
        floor = self.erased_everywhere.get(obj.object_id)
        if floor is not None and (versions.erased is None or versions.erased < floor):
            versions.erased = floor
        return versions


def submit_event(submitter_id: str, obj: ValidObject, outcome: CommitOutcome, at: float) -> Event:
    """The SUBMIT entry of an object the store took (or found held, or refused)."""
    if outcome is CommitOutcome.INSERTED:
        return submitted(submitter_id, obj, ObjectOutcome.ACCEPTED, at)
    if outcome is CommitOutcome.DUPLICATE:
        return submitted(submitter_id, obj, ObjectOutcome.DUPLICATE, at)
    return submitted(submitter_id, refusal(obj, outcome), ObjectOutcome.REJECTED, at)


def bundle_submits(
    submitter_id: str,
    objects: Sequence[tuple[ValidObject, Audience]],
    results: Sequence[Committed],
    rejected: Sequence[Rejection],
    at: float,
) -> list[tuple[int, Event]]:
    """One SUBMIT entry per object of the bundle, in bundle order: the objects the
    store took or refused, and those refused before it. Each with its position in
    ``objects``, or -1 for one of ``rejected``."""
    # (bundle index, position, event); sorted stably, so with equal bundle indexes
    # the objects come first, in their order.
    submits = [
        (obj.index, i, submit_event(submitter_id, obj, done.outcome, at))
        for i, ((obj, _), done) in enumerate(zip(objects, results, strict=True))
    ]
    submits += [
        (r.index, -1, submitted(submitter_id, r, ObjectOutcome.REJECTED, at)) for r in rejected
    ]
    submits.sort(key=lambda s: s[0])
    return [(i, event) for _, i, event in submits]


# The audit table's columns of an entry: idx, at, action, actor, partner, object_id,
# owner, data, leaf_hash (``audit_row``).
AuditValues = tuple[int, float, str, str, str, str, str, bytes, bytes]

_ACCEPTED = ObjectOutcome.ACCEPTED.value
_DUPLICATE = ObjectOutcome.DUPLICATE.value
_SUBMIT = "submit"


def submit_entries(
    submitter_id: str,
    objects: Sequence[tuple[ValidObject, Audience]],
    results: Sequence[Committed],
    rejected: Sequence[Rejection],
    at: float,
    *,
    head: tuple[int, bytes],
) -> tuple[list[Committed], list[AuditValues]]:
    """A bundle's SUBMIT entries chained after ``head`` (entries held, the last one's
    leaf hash): ``results`` with their receipts, and the audit rows to insert.
    The same entries, bytes and receipts as ``bundle_submits``, ``chain``,
    ``with_receipts`` and ``audit_row`` give (what ``commit_objects`` did before),
    built without an ``Event`` per object where ``encode_submit`` can."""
    index, previous = head
    order = [(obj.index, i) for i, (obj, _) in enumerate(objects)]
    order += [(r.index, -1 - n) for n, r in enumerate(rejected)]
    # Stably by bundle index: with equal indexes, the objects first, in their order.
    order.sort(key=lambda item: item[0])
    out = list(results)
    rows: list[AuditValues] = []
    at_6 = round(at, 6)  # as in the canonical bytes
    sha256 = hashlib.sha256
    for _, i in order:
        data: bytes | None = None
        if i >= 0:
            obj = objects[i][0]
            done = out[i]
            outcome = done.outcome
            if outcome is CommitOutcome.INSERTED or outcome is CommitOutcome.DUPLICATE:
                data = encode_submit(
                    submitter_id,
                    obj.object_id,
                    obj.version,
                    body_digest(obj.body),
                    _ACCEPTED if outcome is CommitOutcome.INSERTED else _DUPLICATE,
                    at=at,
                    index=index,
                    previous=previous,
                )
            if data is not None:
                leaf = sha256(b"\x00" + data).digest()
                row = (index, at_6, _SUBMIT, submitter_id, "", obj.object_id, submitter_id)
            else:
                event = submit_event(submitter_id, obj, outcome, at)
        else:
            event = submitted(submitter_id, rejected[-1 - i], ObjectOutcome.REJECTED, at)
        if data is None:
            entry = AuditEntry(index, event, event.encode(index, previous), b"")
            data = entry.data
            leaf = leaf_hash(data)
            row = audit_row(entry)[:7]
        rows.append((*row, data, leaf))
        if i >= 0 and out[i].outcome is CommitOutcome.INSERTED:
            out[i] = Committed(CommitOutcome.INSERTED, out[i].audience, Receipt(index, leaf, data))
        index, previous = index + 1, leaf
    return out, rows


def with_receipts(
    results: Sequence[Committed],
    submits: Sequence[tuple[int, Event]],
    entries: Sequence[AuditEntry],
) -> list[Committed]:
    """``results`` with the receipt of each inserted object's SUBMIT entry
    (``entries`` are ``submits`` as appended)."""
    out = list(results)
    for (i, _), entry in zip(submits, entries, strict=True):
        if i >= 0 and out[i].outcome is CommitOutcome.INSERTED:
            out[i] = out[i]._replace(receipt=Receipt(entry.index, entry.leaf_hash, entry.data))
    return out


def chain(events: Iterable[Event], index: int, previous: bytes) -> list[AuditEntry]:
    """``events`` as entries from ``index`` on, after the entry whose leaf hash is
    ``previous``: each one's canonical bytes commit to the one before."""
    entries: list[AuditEntry] = []
    for event in events:
        data = event.encode(index, previous)
        leaf = leaf_hash(data)
        entries.append(AuditEntry(index, event, data, leaf))
        index, previous = index + 1, leaf
    return entries


def audit_row(
    entry: AuditEntry,
) -> tuple[int, float, str, str, str, str, str, bytes, bytes]:
    """The audit table's columns of ``entry``: idx, at, action, actor, partner,
    object_id, owner, data, leaf_hash."""
    event = entry.event
    return (
        entry.index,
        round(event.at, 6),  # as in the canonical bytes
        event.action.value,
        event.actor,
        event.partner,
        event.object_id,
        event.owner,
        entry.data,
        entry.leaf_hash,
    )


def listed_rows(entries: Iterable[AuditEntry]) -> list[tuple[str, int]]:
    """The object index's rows of ``entries`` (object_id, idx): each object id an
    entry lists (``Event.objects``), once per entry."""
    return [
        (object_id, entry.index)
        for entry in entries
        if entry.event.objects
        for object_id in dict.fromkeys(listed[0] for listed in entry.event.objects)
    ]


# -- the words of errors --------------------------------------------------------------------


def unknown_partner(partner_id: str) -> str:
    return f"unknown partner {partner_id}; name a registered partner by its partner id"


def community_missing(missing: Sequence[str]) -> str:
    plural = len(missing) > 1
    return (
        f"unknown communit{'ies' if plural else 'y'} {', '.join(missing)}; create"
        f" {'them' if plural else 'it'} first, or name an existing community"
    )


def not_a_member(name: str, partner_id: str) -> str:
    return (
        f"partner {partner_id} is not a member of community {name}; list the"
        " communities to see their members"
    )


def credential_id_taken(credential_id: str, holder: str) -> str:
    return (
        f"credential id {credential_id} is already taken (partner {holder}); give the new"
        " credential another id"
    )


def credential_bound(kind: str, holder: str, credential_id: str) -> str:
    return (
        f"this {kind} is already bound to partner {holder} (credential {credential_id}); a"
        f" {kind} belongs to one partner only: revoke that credential first, or use another one"
    )


def unstorable_text(what: str) -> str:
    """Why text PostgreSQL cannot store (a NUL character, U+0000) was refused."""
    return (
        f"{what} holds a NUL character (U+0000), which the database cannot store:"
        " remove it; nothing of this call was stored"
    )


def nul_in_bundle(
    objects: Sequence[tuple[ValidObject, Audience]], rejected: Sequence[Rejection]
) -> str:
    """Which stored text of a bundle holds a NUL character, in words ("" if none)."""
    for obj, audience in objects:
        fields = {
            "id": obj.object_id,
            "version": obj.version,
            "type": obj.object_type,
            "created_by_ref": obj.created_by_ref,
            "spec_version": obj.spec_version,
        }
        fields.update({f"labels[{i}]": label for i, label in enumerate(obj.labels)})
        names = audience.communities | audience.recipients | audience.implied
        fields["audience (a community or recipient)"] = "".join(sorted(names))
        for field, text in fields.items():
            if "\x00" in text:
                return f"object {_shown(obj.object_id)} (index {obj.index}): its {field}"
    for r in rejected:
        for field, text in (("id", r.object_id), ("version", r.version)):
            if "\x00" in text:
                return f"rejected object {_shown(r.object_id)} (index {r.index}): its {field}"
    return ""


def _may_hold_nul(
    objects: Sequence[tuple[ValidObject, Audience]], rejected: Sequence[Rejection]
) -> bool:
    """Whether any text ``nul_in_bundle`` looks at holds a NUL character: one search
    over all of it (``nul_in_bundle`` then says where)."""
    texts: list[str] = []
    audiences: dict[int, Audience] = {}
    for obj, audience in objects:
        texts += (obj.object_id, obj.version, obj.object_type, obj.created_by_ref)
        texts.append(obj.spec_version)
        texts += obj.labels
        audiences[id(audience)] = audience
    for audience in audiences.values():
        texts += audience.communities
        texts += audience.recipients
        texts += audience.implied
    for r in rejected:
        texts += (r.object_id, r.version)
    return "\x00" in "".join(texts)


def _shown(text: str) -> str:
    """Submitted text in a message: bounded, control characters escaped."""
    return printable(short(text, 80))


# The broker's reason a row was set aside, as kept: one bounded line.
SET_ASIDE_REASON_CHARS = 1_000


def set_aside_reason(reason: str) -> str:
    text = " ".join(reason.split()) or "no reason given"
    return text if len(text) <= SET_ASIDE_REASON_CHARS else f"{text[:SET_ASIDE_REASON_CHARS]}..."


def newer_schema(found: int, known: int) -> str:
    return (
        f"the database has schema version {found}, written by a newer release of the"
        f" exchange; this release knows versions up to {known}: upgrade the exchange to open it"
    )


# -- rows -> domain types ------------------------------------------------------------------
# ``strings`` reads a column holding a list of strings: JSON text in SQLite, an array
# in PostgreSQL.

Strings = Callable[[Any], Iterable[Any]]


def partner_of(row: Sequence[Any], strings: Strings) -> Partner:
    pid, name, identity, kind, sectors, roles, tlp, disabled, communities = row
    return Partner(
        partner_id=str(pid),
        name=str(name),
        identity_id=str(identity),
        kind=PartnerKind(kind),
        sectors=tuple(map(str, strings(sectors))),
        roles=frozenset(map(Role, strings(roles))),
        communities=frozenset(map(str, strings(communities))),
        default_tlp=Tlp(str(tlp)),
        disabled=bool(disabled),
    )


def credential_of(row: Sequence[Any]) -> Credential:
    cid, pid, kind, digest, created_at, expires_at, revoked_at = row
    return Credential(
        credential_id=str(cid),
        partner_id=str(pid),
        kind=CredentialKind(kind),
        digest=bytes(digest),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        revoked_at=None if revoked_at is None else float(revoked_at),
    )


# Stored audiences repeat (a bundle's objects share one; a partner uses a few): each
# distinct one is parsed once. Audience is immutable, so the copies can be shared.
_audience_of = functools.lru_cache(maxsize=4096)(Audience.from_json)


def stored_of(row: Sequence[Any], strings: Strings) -> StoredObject:
    seq, submitter, accepted_at, oid, otype, version, creator, tlp, body = row[:9]
    labels, revoked, spec, audience = row[9:]
    return StoredObject(
        seq=int(seq),
        submitter=str(submitter),
        accepted_at=float(accepted_at),
        obj=ValidObject(
            object_id=str(oid),
            object_type=str(otype),
            version=str(version),
            created_by_ref=str(creator),
            tlp=Tlp(str(tlp)),
            body=bytes(body),
            labels=tuple(map(str, strings(labels))),
            revoked=bool(revoked),
            spec_version=str(spec),
        ),
        audience=_audience_of(audience),
    )


def candidate_of(row: Sequence[Any]) -> RetentionCandidate:
    """A retention candidate from its row: seq, object id, submitter, type, accepted at,
    TLP, audience (JSON), valid_until (text, or anything else for none)."""
    seq, oid, submitter, otype, accepted_at, tlp, audience, valid_until = row
    return RetentionCandidate(
        seq=int(seq),
        object_id=str(oid),
        submitter=str(submitter),
        object_type=str(otype),
        accepted_at=float(accepted_at),
        tlp=Tlp(tlp),
        audience=Audience.from_json(audience),
        valid_until=valid_until if isinstance(valid_until, str) else None,
    )


def set_aside_of(row: Sequence[Any]) -> SetAsideRow:
    seq, object_id, version, submitter, reason, at = row
    return SetAsideRow(
        int(seq), str(object_id), str(version), str(submitter), str(reason), float(at)
    )


def checkpoint_of(row: Sequence[Any]) -> SignedCheckpoint:
    size, note, signature = row
    return SignedCheckpoint(int(size), bytes(note), bytes(signature))


class OutboxListeners:
    """``on_outbox`` of both stores: the callbacks run after this process committed
    outbox rows (``outbox_added_by``) and, with PostgreSQL, when another process did."""

    def __init__(self) -> None:
        self._outbox_callbacks: list[Callable[[], None]] = []

    def on_outbox(self, callback: Callable[[], None]) -> None:
        self._outbox_callbacks.append(callback)

    def _outbox_added(self, *_: object) -> None:
        for callback in self._outbox_callbacks:
            callback()

    def _committed(self, committed: list[Committed]) -> list[Committed]:
        """``committed``, after telling the listeners if it added outbox rows."""
        if any(c.outcome is CommitOutcome.INSERTED for c in committed):
            self._outbox_added()
        return committed


def check_first_credential(partner: Partner, credential: Credential) -> None:
    """``add_partner``: the first credential must be the new partner's."""
    if credential.partner_id != partner.partner_id:
        raise InvalidArgument(
            f"the first credential of partner {partner.partner_id} names partner"
            f" {credential.partner_id}; it must name the new partner"
        )


def nothing_to_commit(
    objects: Sequence[tuple[ValidObject, Audience]], rejected: Sequence[Rejection]
) -> bool:
    """``commit_objects``: True if the bundle leaves nothing to write. Validation refuses
    NUL characters in objects; should one get here all the same, both stores refuse the
    bundle alike (PostgreSQL cannot store it)."""
    if not objects and not rejected:
        return True
    if _may_hold_nul(objects, rejected) and (nul := nul_in_bundle(objects, rejected)):
        raise InvalidArgument(unstorable_text(nul))
    return False


def _latest_of_copy(order: str) -> str:
    return (
        "o.seq = (SELECT l.seq FROM objects l WHERE l.object_id = o.object_id"  # noqa: S608 (order is ASC or DESC)
        " AND l.created_by_ref = o.created_by_ref AND l.erased_at IS NULL"
        f" ORDER BY l.version_key {order},"
        f" l.seq {order} LIMIT 1)"
    )


def published_where(query: PublishedQuery, mark: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The WHERE clause (after ``FROM objects o``) and parameters of ``query``, the same
    for both backends but for the parameter marks (``mark(n)``: "?" or "$n")."""
    params: list[Any] = []

    def add(value: Any) -> str:
        params.append(value)
        return mark(len(params))

    def one_of(column: str, values: Iterable[Any]) -> str:
        return f"{column} IN ({', '.join(add(v) for v in values)})"

    # Published: below the oldest row still in the outbox, and never set aside.
    clauses = [
        f"o.seq > {add(query.after_seq)}",
        "o.seq < COALESCE((SELECT MIN(b.seq) FROM outbox b), 9223372036854775807)",
        "NOT EXISTS (SELECT 1 FROM set_aside s WHERE s.seq = o.seq)",
        "o.erased_at IS NULL",
    ]
    if query.object_ids:
        clauses.append(one_of("o.object_id", query.object_ids))
    if query.types:
        clauses.append(one_of("o.object_type", query.types))
    if query.spec_versions:
        clauses.append(one_of("o.spec_version", query.spec_versions))
    if query.accepted_from is not None:
        clauses.append(f"o.accepted_at >= {add(query.accepted_from)}")
    if "all" not in query.versions:
        which = [_latest_of_copy("DESC")] if "last" in query.versions else []
        if "first" in query.versions:
            which.append(_latest_of_copy("ASC"))
        exact = [version_key(v) for v in query.versions if v not in ("first", "last")]
        if exact:
            which.append(one_of("o.version_key", exact))
        clauses.append("(" + " OR ".join(which) + ")")
    return " AND ".join(clauses) + f" ORDER BY o.seq LIMIT {add(query.limit)}", params
