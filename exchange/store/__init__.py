"""Persistence behind one protocol: partners, credentials, every STIX object
version, and the outbox the relay drains.

``sqlite.SqliteStore`` is the embedded default; a PostgreSQL store implements
the same protocol. The store never decides who may see what (that is
``policy``); it only keeps data and its integrity rules: one row per
(id, version), only an object's creator adds versions, revoked stays revoked.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from exchange.bus import TopicPartition
from exchange.model import Partner, StoredObject, ValidObject

__all__ = ["CommitOutcome", "Store"]


class CommitOutcome(enum.StrEnum):
    INSERTED = "inserted"
    # This id and version is already held.
    DUPLICATE = "duplicate"
    # The id is held under another creator's identity.
    NOT_CREATOR = "not-creator"
    # The object was revoked; STIX allows no new version after that.
    REVOKED = "revoked"


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- partners and credentials -------------------------------------------------
    async def add_partner(self, partner: Partner, token_hash: bytes) -> None:
        """Register a partner with its first credential; AlreadyExists if the
        partner id or STIX identity is taken."""
        ...

    async def partner_for_token(self, token_hash: bytes) -> Partner | None:
        """The partner holding this (hashed) credential, if it is valid."""
        ...

    async def list_partners(self) -> list[Partner]: ...

    # -- objects ----------------------------------------------------------------
    async def commit_objects(
        self, submitter: Partner, objects: Sequence[ValidObject], accepted_at: float
    ) -> list[CommitOutcome]:
        """Store the objects and their outbox rows in ONE transaction, durable
        before this returns. One outcome per object, in order; only INSERTED
        ones were written."""
        ...

    # -- relay --------------------------------------------------------------------
    async def pending_outbox(self, limit: int) -> list[StoredObject]:
        """Accepted objects not yet published to the bus, oldest first."""
        ...

    async def mark_published(
        self, seqs: Sequence[int], positions: Mapping[TopicPartition, int]
    ) -> None:
        """Drop these outbox rows and record, per topic-partition, the offset after
        the last record published there (what "from now" means for subscribers)."""
        ...

    async def relay_positions(self, topics: Iterable[str]) -> dict[TopicPartition, int]: ...
