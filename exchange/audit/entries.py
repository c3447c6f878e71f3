"""What an audit entry says: the personality of the audit log.

An ``Event`` is what happened; the store appends it as an entry with its place in
the log (index), the hash of the previous entry, and its leaf hash. Its canonical
bytes (``encode``) are what the Merkle tree commits to: sorted-key compact JSON,
so that any verifier can re-derive them. Nothing here holds an object body, a
token or a key: object ids, versions, SHA-256 digests of stored bodies, partner ids.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from exchange.audit._bounds import MAX_TEXT_CHARS, bounded_detail, bounded_text
from exchange.model import Erasure, ObjectOutcome, Rejection, StoredObject, ValidObject

__all__ = [
    "MAX_LISTED",
    "OPERATOR",
    "Action",
    "AuditEntry",
    "AuditQuery",
    "Event",
    "Listed",
    "body_digest",
    "deliveries",
    "delivery_of",
    "encode_submit",
    "erased",
    "submitted",
]

# The actor of changes made with the CLI on the data directory (no partner signed in).
OPERATOR = "operator"

Detail = Mapping[str, str | int | float | bool | list[str]]

# An object version an entry lists: (object id, version, SHA-256 of its stored body).
Listed = tuple[str, str, str]
# At most this many versions in one entry (the recorder starts another): an entry stays
# under ~40 KB, and a proof of one delivery costs that at most.
MAX_LISTED = 256


class Action(enum.StrEnum):
    # One object of a submission; detail: outcome (accepted|duplicate|rejected),
    # and for a rejection property and reason.
    SUBMIT = "submit"
    # Object versions sent to one partner over a short span, all of one owner, listed
    # in ``objects``; detail: channel (subscribe), last_at (the last one's time; the
    # entry's time is the first one's), and confirmed = false for those in a message
    # whose write was cut short. (Earlier releases wrote one entry per version, in
    # object_id, version and digest.)
    DELIVER = "deliver"
    # A Subscribe stream started / ended; detail: start (cursor|beginning|now), filters,
    # and at the end the reason and deliveries count.
    SUBSCRIBE_START = "subscribe.start"
    SUBSCRIBE_END = "subscribe.end"
    # A GetObject look-up; detail: found (bool).
    LOOKUP = "lookup"
    # Every version of one copy of an object was erased (actor: its creator, or the
    # operator); owner: the copy's partner; objects: the versions erased with the
    # digests of their bodies (the bodies are gone; the entries that named them still
    # verify); detail: reason (a code), and more_versions when over MAX_LISTED.
    ERASE = "erase"
    # An erasure notice was sent to the actor (a subscriber); owner: the erased copy's
    # partner; detail: channel, erasure (its id), versions (how many it named).
    ERASE_NOTICE = "erase.notice"
    # An audit query, a checkpoint or proof request; detail: the filters.
    AUDIT_QUERY = "audit.query"
    # Registry changes; ``partner`` is the partner changed (or joining / leaving),
    # detail: what changed (never a secret; credential ids only).
    PARTNER_ADD = "partner.add"
    PARTNER_UPDATE = "partner.update"
    COMMUNITY_ADD = "community.add"
    COMMUNITY_JOIN = "community.join"
    COMMUNITY_LEAVE = "community.leave"
    CREDENTIAL_ISSUE = "credential.issue"
    CREDENTIAL_REVOKE = "credential.revoke"


_NUL = "\x00"
_TEXT_FIELDS = ("actor", "partner", "object_id", "version", "digest", "owner")


@dataclass(frozen=True, slots=True)
class Event:
    """Something to record. ``actor`` did ``action``; ``partner`` is the partner it
    concerns when that is another one (the recipient of a delivery is the actor of
    its DELIVER entry); ``owner`` is the submitter of the object concerned, so that a
    partner can review who received what it shared. An entry about one object names it
    in ``object_id``, ``version`` and ``digest``; an entry about several (DELIVER)
    lists them in ``objects`` instead, all of one owner."""

    action: Action
    actor: str
    at: float
    partner: str = ""
    object_id: str = ""
    version: str = ""
    digest: str = ""  # SHA-256 (hex) of the stored object body
    owner: str = ""
    detail: Detail = field(default_factory=dict)
    objects: tuple[Listed, ...] = ()

    def __post_init__(self) -> None:
        # The net under every caller (invariant 6): whatever a request held, the entry
        # stays small (exchange/audit/_bounds.py). Bounding is deterministic and leaves a
        # bounded event as it is, so an entry decoded from its bytes equals the original.
        fields = (self.actor, self.partner, self.object_id, self.version, self.digest, self.owner)
        if max(map(len, fields)) > MAX_TEXT_CHARS or any(_NUL in f for f in fields):
            for name in _TEXT_FIELDS:
                # NUL spelled out: a text column of PostgreSQL cannot hold it, and an
                # entry the store refuses would hold up every entry after it.
                text = bounded_text(getattr(self, name).replace(_NUL, "\\u0000"))
                object.__setattr__(self, name, text)
        detail = bounded_detail(self.detail)
        if detail is not self.detail:
            object.__setattr__(self, "detail", detail)
        if self.objects:
            self._bound_objects()

    def _bound_objects(self) -> None:
        if len(self.objects) > MAX_LISTED:
            # Never from a request: the recorder splits at MAX_LISTED.
            raise ValueError(f"an audit entry lists at most {MAX_LISTED} object versions")
        texts = [t for listed in self.objects for t in listed]
        if len(texts) != 3 * len(self.objects):
            raise ValueError("an object an audit entry lists is (id, version, digest)")
        if max(map(len, texts)) > MAX_TEXT_CHARS or any(_NUL in t for t in texts):
            bounded = tuple(
                tuple(bounded_text(t.replace(_NUL, "\\u0000")) for t in listed)
                for listed in self.objects
            )
            object.__setattr__(self, "objects", bounded)

    def encode(self, index: int, previous: bytes) -> bytes:
        """The entry's canonical bytes at ``index`` after the entry whose leaf hash is
        ``previous`` (32 zero bytes for the first): what its leaf hash covers. An entry
        without ``objects`` has no such key, byte for byte as earlier releases wrote it."""
        doc = {
            "v": 1,
            "index": index,
            "prev": previous.hex(),
            "at": round(self.at, 6),
            "action": self.action.value,
            "actor": self.actor,
            "partner": self.partner,
            "object_id": self.object_id,
            "version": self.version,
            "digest": self.digest,
            "owner": self.owner,
            "detail": dict(self.detail),
        }
        if self.objects:
            doc["objects"] = self.objects
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, data: bytes) -> tuple[int, bytes, Event]:
        """(index, previous leaf hash, event) from ``encode``'s bytes; ValueError or
        KeyError for anything else."""
        doc = orjson.loads(data)
        if doc.get("v") != 1:
            raise ValueError("not a version 1 audit entry")
        event = cls(
            action=Action(doc["action"]),
            actor=str(doc["actor"]),
            at=float(doc["at"]),
            partner=str(doc["partner"]),
            object_id=str(doc["object_id"]),
            version=str(doc["version"]),
            digest=str(doc["digest"]),
            owner=str(doc["owner"]),
            detail=dict(doc["detail"]),
            objects=tuple(_listed(item) for item in doc.get("objects", ())),
        )
        return int(doc["index"]), bytes.fromhex(doc["prev"]), event


def _listed(item: object) -> Listed:
    if not isinstance(item, list) or len(item) != 3 or not all(isinstance(t, str) for t in item):
        raise ValueError("an object an audit entry lists is [id, version, digest]")
    return item[0], item[1], item[2]


def encode_submit(
    submitter: str,
    object_id: str,
    version: str,
    digest: str,
    outcome: str,
    *,
    at: float,
    index: int,
    previous: bytes,
) -> bytes | None:
    """``submitted(submitter, obj, ObjectOutcome(outcome), at).encode(index, previous)``
    for an object the store took or found held (``digest``: its body's), byte for
    byte, without building the ``Event``: what a bundle's commit spends most of its
    Python time on. None when the event
    would be bounded (a field too long or holding a NUL): then build the ``Event``.
    ``tests/unit/test_audit_entries.py`` holds the two equal."""
    if (
        len(object_id) > MAX_TEXT_CHARS
        or len(version) > MAX_TEXT_CHARS
        or len(submitter) > MAX_TEXT_CHARS
        or _NUL in object_id
        or _NUL in version
        or _NUL in submitter
    ):
        return None
    # Event.encode's document with its keys inserted in sorted order: orjson then
    # writes the bytes OPT_SORT_KEYS would.
    return orjson.dumps(
        {
            "action": "submit",
            "actor": submitter,
            "at": round(at, 6),
            "detail": {"outcome": outcome},
            "digest": digest,
            "index": index,
            "object_id": object_id,
            "owner": submitter,
            "partner": "",
            "prev": previous.hex(),
            "v": 1,
            "version": version,
        }
    )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An event in the log."""

    index: int
    event: Event
    data: bytes  # the canonical bytes (Event.encode)
    leaf_hash: bytes  # RFC 6962: SHA-256(0x00 || data)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries to list; empty fields match everything. ``since`` is inclusive,
    ``until`` exclusive (seconds since the epoch)."""

    partner: str = ""  # the actor, or the partner concerned
    object_id: str = ""
    action: str = ""
    since: float | None = None
    until: float | None = None
    after_index: int = -1  # paging: entries with a larger index
    limit: int = 1000


def body_digest(body: bytes) -> str:
    """SHA-256 (hex) of a stored object body. (A delivered record keeps its own:
    ``StoredObject.body_digest``, computed once for every stream that sends it.)"""
    return hashlib.sha256(body).hexdigest()


def submitted(
    submitter: str,
    obj: ValidObject | Rejection,
    outcome: ObjectOutcome,
    at: float,
) -> Event:
    """The SUBMIT entry of one object of a submission."""
    if isinstance(obj, Rejection):
        return Event(
            Action.SUBMIT,
            submitter,
            at,
            object_id=obj.object_id,
            version=obj.version,
            owner=submitter,
            detail={"outcome": outcome.value, "property": obj.property, "reason": obj.expected},
        )
    return Event(
        Action.SUBMIT,
        submitter,
        at,
        object_id=obj.object_id,
        version=obj.version,
        digest=body_digest(obj.body),
        owner=submitter,
        detail={"outcome": outcome.value},
    )


def delivery_of(recipient: str, stored: StoredObject) -> tuple[str, Listed]:
    """What a DELIVER entry says of one object version sent to ``recipient``: the
    entry's owner (whose entries list it) and the version as listed. The entry names
    the channel, not the recipient's cursor: the submitter reads it too, and a cursor
    would show it the recipient's other topics (communities) and offsets."""
    obj = stored.obj
    # A partner reached only because of what the object refers to (the creator of the
    # indicator a sighting is of): the submitter must not see it received the object,
    # since that would tell whose indicator it was. Such versions go in an entry with
    # no owner, so only the recipient and auditors read it.
    audience = stored.audience
    implied = recipient in audience.implied and recipient not in audience.recipients
    owner = "" if implied else stored.submitter
    return owner, (obj.object_id, obj.version, stored.body_digest())


def deliveries(
    recipient: str,
    owner: str,
    listed: Sequence[Listed],
    first_at: float,
    last_at: float,
    *,
    channel: str = "subscribe",
    confirmed: bool = True,
) -> Event:
    """The DELIVER entry of object versions of ``owner`` (see ``delivery_of``) sent to
    ``recipient`` between ``first_at`` and ``last_at``. Not ``confirmed``: the
    recipient went away while the message holding them was being sent, so they may or
    may not have arrived."""
    detail: dict[str, str | float | bool] = {"channel": channel, "last_at": round(last_at, 6)}
    if not confirmed:
        detail["confirmed"] = False
    return Event(
        Action.DELIVER, recipient, first_at, owner=owner, detail=detail, objects=tuple(listed)
    )


def erased(erasure: Erasure) -> Event:
    """The ERASE entry of ``erasure``: which versions (ids, versions, digests), why, who;
    never a word of what they said."""
    listed = tuple((erasure.object_id, v.version, v.digest) for v in erasure.versions)
    detail: dict[str, str | int] = {"reason": erasure.reason.value}
    if len(listed) > MAX_LISTED:
        # The newest are listed: the older ones are named by their own SUBMIT entries.
        detail["more_versions"] = len(listed) - MAX_LISTED
        listed = listed[-MAX_LISTED:]
    return Event(
        Action.ERASE,
        erasure.erased_by,
        erasure.erased_at,
        partner=erasure.submitter if erasure.submitter != erasure.erased_by else "",
        object_id=erasure.object_id,
        version=erasure.versions[-1].version if erasure.versions else "",
        owner=erasure.submitter,
        detail=detail,
        objects=listed,
    )
