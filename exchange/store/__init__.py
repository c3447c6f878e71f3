"""Persistence behind one protocol per concern: the partner registry (partners, communities,
credentials), every STIX object version with its audience, and the outbox the
relay drains.

``sqlite.SqliteStore`` is the embedded default; a PostgreSQL store implements
the same protocol. The store never decides who may see what (that is
``policy``: ``commit_objects`` takes policy's ``widen`` as an argument); it only
keeps data and its integrity rules: one row per (id, version) of each copy, only an
object's creator adds versions, revoked stays revoked, names and identities are
unique. An SDO or SRO has one copy, its creator's; an observable (SCO), whose id is
derived from its value, has one copy per partner that submitted it.
Every change to the registry moves ``registry_version``, so that servers notice
changes made by another process (the CLI on the data directory, a replica).

Errors every store raises alike: ``Unavailable`` when the database cannot be reached;
``StoreFull`` (an Unavailable) when a write finds no room on disk, after which
``ping`` fails until there is room again; ``InvalidArgument`` for text a database
cannot store (a NUL character).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from exchange.audit.entries import AuditEntry, AuditQuery, Event
from exchange.bus import TopicPartition
from exchange.errors import InvalidArgument
from exchange.model import (
    Audience,
    Community,
    Credential,
    CredentialKind,
    EraseReason,
    Erasure,
    Partner,
    Receipt,
    Rejection,
    StoredObject,
    Tlp,
    ValidObject,
)

if TYPE_CHECKING:
    from exchange.config import Settings
    from exchange.metrics import Metrics

__all__ = [
    "AuditRow",
    "AuditStore",
    "CommitOutcome",
    "Committed",
    "ObjectStore",
    "PublishedQuery",
    "Receipt",
    "RegistryStore",
    "RetentionCandidate",
    "RetentionQuery",
    "RetentionStore",
    "SetAsideRow",
    "SignedCheckpoint",
    "Store",
    "StoreLifecycle",
    "open_store",
    "refusal",
]


class CommitOutcome(enum.StrEnum):
    INSERTED = "inserted"
    # This id and version is already held (for an observable: in the submitter's copy).
    DUPLICATE = "duplicate"
    # The id (an SDO or SRO) is held under another creator's identity.
    NOT_CREATOR = "not-creator"
    # The object was revoked; STIX allows no new version after that.
    REVOKED = "revoked"
    # This copy was erased, and the version is not newer than the erased ones: an
    # erased object does not come back by replay (its creator may publish a new version).
    ERASED = "erased"


def refusal(obj: ValidObject, outcome: CommitOutcome) -> Rejection:
    """Why the store refused ``obj`` (NOT_CREATOR, REVOKED or ERASED): the reason the
    submitter gets and its SUBMIT audit entry keeps."""
    if outcome is CommitOutcome.NOT_CREATOR:
        # Do not name the owner: the submitter may not be entitled to know it.
        return Rejection(
            obj.object_id,
            "id",
            "an id this partner created; another partner holds this object, and only its"
            " creator may publish new versions of it",
            obj.index,
            obj.version,
        )
    if outcome is CommitOutcome.ERASED:
        return Rejection(
            obj.object_id,
            "modified",
            "a version newer than the erased ones: this object was erased, and an erased"
            " version is not taken again",
            obj.index,
            obj.version,
        )
    return Rejection(
        obj.object_id,
        "revoked",
        "no new version: this object was revoked, and STIX allows no version after that",
        obj.index,
        obj.version,
    )


class Committed(NamedTuple):
    outcome: CommitOutcome
    # INSERTED: the audience the version was stored with (widened by earlier versions).
    audience: Audience | None = None
    # INSERTED: the receipt of its SUBMIT audit entry.
    receipt: Receipt | None = None


class AuditRow(NamedTuple):
    """An audit entry exactly as stored, for verification: the canonical bytes and
    leaf hash, and the columns kept beside them for queries."""

    log_index: int
    data: bytes
    leaf_hash: bytes
    at: float
    action: str
    actor: str
    partner: str
    object_id: str
    owner: str


class SetAsideRow(NamedTuple):
    """An accepted object version the bus refused to take: stored, not published."""

    seq: int
    object_id: str
    version: str
    submitter: str
    reason: str
    at: float


class SignedCheckpoint(NamedTuple):
    """A checkpoint as stored: the signed note and its signature
    (exchange_protocol.checkpoint.Checkpoint.parse reads them)."""

    tree_size: int
    note: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class PublishedQuery:
    """A page of published object versions in acceptance order (the store's sequence),
    for readers that page (TAXII). Values are checked by the caller; the store only
    filters. ``versions`` holds "first", "last" (of each copy), "all", or versions
    (STIX timestamps); several are OR-ed."""

    after_seq: int
    limit: int
    object_ids: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    spec_versions: tuple[str, ...] = ()
    versions: tuple[str, ...] = ("last",)
    # Accepted at or after this time (epoch seconds).
    accepted_from: float | None = None


class StoreLifecycle(Protocol):
    """Opening, health and coordination: what every process does with the store."""

    async def open(self) -> None:
        """Connect, and bring the schema to the current version (``migrate``).
        Unavailable if the database cannot be reached or was written by a newer release."""
        ...

    async def close(self) -> None: ...

    async def migrate(self) -> tuple[int, int]:
        """Apply the schema migrations this database lacks, in one transaction, without
        opening the store for use. Returns (version found, version now)."""
        ...

    async def ping(self) -> None:
        """Return when the database answers; Unavailable if it does not (health checks).
        While the store is full (a write failed for lack of space), StoreFull until a
        probe write succeeds again."""
        ...

    async def hold_lease(self, job: str) -> bool:
        """Whether this process runs ``job`` (the outbox relay, the audit mirror) among
        every process sharing this store: True for one process at a time, until it
        exits or loses its connection. Asking again keeps or retries the lease."""
        ...

    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Have ``callback`` called when outbox rows may have been added, so that the
        relay need not wait for its next poll: after each ``commit_objects`` of this
        process that inserted a version, and (PostgreSQL) when another process did,
        while this process holds the ``relay`` lease. The relay's only wake-up call."""
        ...


class RegistryStore(Protocol):
    """The partner registry: partners, communities, credentials, and the version that
    tells other processes the registry changed."""

    async def add_partner(self, partner: Partner, credential: Credential) -> None:
        """Register a partner, its community memberships and its first credential.
        AlreadyExists if the partner id or STIX identity is taken; NotFound if a
        community does not exist."""
        ...

    async def get_partner(self, partner_id: str) -> Partner | None: ...

    async def list_partners(self) -> list[Partner]:
        """Every partner (disabled ones too), oldest first."""
        ...

    async def update_partner(self, partner: Partner) -> None:
        """Replace name, kind, sectors, roles, default TLP and disabled of an existing
        partner (not its id, identity or memberships). NotFound if unknown."""
        ...

    async def add_community(self, community: Community) -> None:
        """AlreadyExists if the name is taken."""
        ...

    async def list_communities(self) -> list[Community]:
        """Every community with its members (sorted partner ids), by name."""
        ...

    async def join_community(self, name: str, partner_id: str) -> None:
        """NotFound if either does not exist; joining twice changes nothing."""
        ...

    async def leave_community(self, name: str, partner_id: str) -> None:
        """NotFound if either does not exist or the partner is not a member."""
        ...

    async def add_credential(self, credential: Credential) -> None:
        """NotFound if the partner is unknown; AlreadyExists if the digest is bound."""
        ...

    async def list_credentials(self, partner_id: str) -> list[Credential]:
        """A partner's credentials, revoked and expired ones included, oldest first."""
        ...

    async def revoke_credential(self, partner_id: str, credential_id: str, at: float) -> Credential:
        """Revoke (revoking twice keeps the first time); NotFound if the partner has
        no such credential. Returns the credential as revoked."""
        ...

    async def credential(
        self, kind: CredentialKind, digest: bytes
    ) -> tuple[Credential, Partner] | None:
        """The credential with this digest and its partner, whatever its state
        (revoked, expired): the caller decides and says why."""
        ...

    async def registry_version(self) -> int:
        """A number that changes with every change to partners, communities,
        memberships or credentials."""
        ...


class ObjectStore(Protocol):
    """Object versions with their audiences, and the outbox the relay drains."""

    async def commit_objects(
        self,
        submitter: Partner,
        objects: Sequence[tuple[ValidObject, Audience]],
        accepted_at: float,
        widen: Callable[[Audience, Audience], Audience],
        rejected: Sequence[Rejection] = (),
    ) -> list[Committed]:
        """Store the objects (each with the audience its submission asked for),
        their outbox rows and the submission's audit entries in ONE transaction,
        durable before this returns.

        A new version of a held object is stored with ``widen(held, asked)``, where
        ``held`` is the audience of the object's latest version; the first version
        with ``asked``. One result per object, in order; only INSERTED ones were
        written. Every object gets a SUBMIT audit entry (audit.entries.submitted):
        inserted ones (their receipt is in the result), duplicates, those the store
        refused, and each of ``rejected`` (refused before the store), in bundle order."""
        ...

    async def submitters_of(self, object_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """For each held object id, the partner ids holding a copy of it: the one that
        created it for an SDO or SRO; for an observable (SCO, whose id is derived from
        its value and carries no creator) every partner that submitted one."""
        ...

    async def object_copies(self, object_id: str, version: str | None = None) -> list[StoredObject]:
        """The held version (compared canonically; the latest when ``version`` is None) of
        every copy of ``object_id``: at most one for an SDO or SRO, one per submitting
        partner for an observable. The caller (policy) picks what the asker may see."""
        ...

    async def pending_outbox(self, limit: int, max_bytes: int | None = None) -> list[StoredObject]:
        """Accepted objects not yet published to the bus, oldest first: at most
        ``limit``, and at most ``max_bytes`` of bodies (but always the oldest one)."""
        ...

    async def mark_published(
        self,
        seqs: Sequence[int],
        positions: Mapping[TopicPartition, int],
        set_aside: Mapping[int, str] | None = None,
    ) -> None:
        """Drop these outbox rows and record, per topic-partition, the offset after
        the last record published there (what "from now" means for subscribers).
        ``set_aside``: rows the bus refused (seq -> the reason): they leave the outbox
        too and are kept, with the reason and the time, among the set-aside rows."""
        ...

    async def set_aside_rows(self, limit: int = 1000) -> list[SetAsideRow]:
        """Outbox rows the relay set aside, oldest first (for the operator). They are
        not put back: republished under their old sequence number, subscribers would
        take them for repeats; the submitter publishes a new version instead."""
        ...

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]: ...

    async def published_objects(self, query: PublishedQuery) -> list[StoredObject]:
        """Object versions after ``query.after_seq`` that match it, by sequence, at most
        ``query.limit``: only what the relay published (below the oldest outbox row,
        and not set aside), so that what a pager saw once stays the same and every later
        version has a higher sequence. Each with the audience it was stored with; the
        caller (policy) decides who may see it."""
        ...

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
        """Erase copies of ``object_id`` in ONE transaction: ``copy_of`` a partner id,
        that partner's copy (its object, or its copy of an observable); None (the
        operator), every copy. Each version's body is removed (its row stays, without
        the body, so that the version is not taken again: ``CommitOutcome.ERASED``), its
        outbox row dropped, an erasure queued for the relay (``pending_erasures``), and
        an ERASE audit entry appended per copy (``by``: the partner id or "operator").
        Returns one Erasure per copy erased now; ``[]`` when there was nothing left to
        erase (see ``erasures_of``). ``latest_seq`` (with ``copy_of``): erase only if the
        copy's newest version (by acceptance) still has this sequence number, else
        nothing (retention: a copy given a new version since it was found due is kept)."""
        ...

    async def erasures_of(self, object_id: str, copy_of: str | None = None) -> list[Erasure]:
        """Erasures of ``object_id`` made so far (of ``copy_of``'s copy only), oldest first."""
        ...

    async def erasure(self, erasure_id: int) -> Erasure | None: ...

    async def pending_erasures(self, limit: int) -> list[Erasure]:
        """Erasures the relay has not published yet, oldest first."""
        ...

    async def mark_erasures_published(
        self, erasure_ids: Sequence[int], positions: Mapping[TopicPartition, int]
    ) -> None:
        """These erasures' tombstones are on the bus; record the positions after them
        (as ``mark_published``)."""
        ...

    async def erased_copies(self, after_id: int) -> list[tuple[int, str, str, str]]:
        """Erasures after ``after_id``, as (erasure id, object id, the copy's partner id,
        the version key of its newest erased version): what a process needs to hold
        back records of erased versions still on the bus (before compaction)."""
        ...


class AuditStore(Protocol):
    """The audit log: its hash-chained entries, signed checkpoints, signing key and
    how far its bus mirror got."""

    async def audit_public_key(self, public_key: bytes) -> bytes:
        """The public key that signs this log's checkpoints: ``public_key`` if none was
        recorded yet (it is then recorded), else the one recorded first. Replicas
        compare it with their own key before they sign anything."""
        ...

    async def append_audit(self, events: Sequence[Event]) -> list[AuditEntry]:
        """Append entries in one transaction (each committing to the previous one)."""
        ...

    async def audit_size(self) -> int:
        """How many entries the log holds."""
        ...

    async def audit_entries(self, query: AuditQuery, *, only_of: str = "") -> list[AuditEntry]:
        """Entries matching ``query``, by index, after ``query.after_index``, at most
        ``query.limit``. ``only_of``: only entries whose actor or owner is that partner
        id (policy decides who is limited so)."""
        ...

    async def audit_rows(self, start: int, limit: int) -> list[AuditRow]:
        """Stored entries from index ``start`` on, as stored (for verification)."""
        ...

    async def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Stored leaf hashes of indexes ``start`` to ``end - 1``."""
        ...

    async def audit_unindexed(self, listed: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Which of ``listed`` (object id, index of an entry listing it) the index of
        listed objects lacks (for verification)."""
        ...

    async def add_checkpoint(self, checkpoint: SignedCheckpoint) -> None:
        """Keep a signed checkpoint (one per tree size; a second one is ignored)."""
        ...

    async def checkpoints(self) -> list[SignedCheckpoint]:
        """Every kept checkpoint, by tree size."""
        ...

    async def latest_checkpoint(self) -> SignedCheckpoint | None: ...

    async def audit_mirror_position(self) -> int:
        """The next audit index to mirror to the bus (0 at first)."""
        ...

    async def set_audit_mirror_position(self, index: int) -> None: ...


@dataclass(frozen=True, slots=True)
class RetentionQuery:
    """Which copies ``retention_candidates`` returns: those whose latest version (by
    acceptance) is not erased and matches one of the conditions, after ``after_seq``
    (the latest version's sequence number), at most ``limit``, in that order.
    Times are epoch seconds; a copy is matched when accepted at or before them."""

    # The latest version's TLP (its own marking) -> accepted at or before.
    tlp_accepted_before: Mapping[Tlp, float]
    # A community of the latest version's audience -> accepted at or before.
    community_accepted_before: Mapping[str, float]
    # Indicators whose valid_until's first 19 characters (YYYY-MM-DDTHH:MM:SS) are at or
    # before this: a superset of those expired (the fraction is for the caller to
    # compare); None: none.
    valid_until_before: str | None
    after_seq: int = 0
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class RetentionCandidate:
    """One copy of an object as retention sees it: its latest version (by acceptance),
    which holds the copy's cumulative audience."""

    seq: int  # of the latest version
    object_id: str
    submitter: str  # the copy's partner
    object_type: str
    accepted_at: float  # of the latest version
    tlp: Tlp  # the latest version's marking
    audience: Audience
    valid_until: str | None  # an indicator's, as written; None otherwise


class RetentionStore(Protocol):
    """What retention (exchange/retention.py) reads; it erases with ``erase_object``."""

    async def retention_candidates(self, query: RetentionQuery) -> list[RetentionCandidate]:
        """Copies that still hold unerased versions and that ``query`` matches, by the
        sequence number of their latest version."""
        ...


class Store(StoreLifecycle, RegistryStore, ObjectStore, AuditStore, RetentionStore, Protocol):
    """Everything a store does; a component that needs one concern takes that protocol."""


def open_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """The store the settings name: PostgreSQL for a ``database`` URL, else the SQLite
    file in the data directory. Not opened yet. ``metrics``: where it shows a full disk."""
    # The backends are imported here: both import this module, and the embedded
    # default must not need the PostgreSQL driver (an optional extra).
    if settings.database:
        try:
            from exchange.store.postgres import PostgresStore  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            if exc.name != "asyncpg":
                raise
            raise InvalidArgument(
                "database names a PostgreSQL URL, but the PostgreSQL driver is not installed;"
                " install it with: pip install 'trafficking-indicator-exchange[postgres]'"
            ) from None
        return PostgresStore(
            settings.database,
            pool_size=settings.postgres.pool_size,
            timeout_s=settings.postgres.timeout_s,
            metrics=metrics,
        )
    from exchange.store.sqlite import SqliteStore  # noqa: PLC0415

    return SqliteStore(settings.sqlite_path, metrics=metrics)
