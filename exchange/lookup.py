"""Object look-ups: one version of an object, if the caller may see it. Each
look-up is recorded in the audit log, found or not."""

from __future__ import annotations

import time

from exchange import policy
from exchange.audit.entries import Action, Event, body_digest
from exchange.audit.recorder import AuditRecorder
from exchange.errors import NotFound
from exchange.model import Partner, StoredObject
from exchange.store import ObjectStore

__all__ = ["get_object"]


async def get_object(
    store: ObjectStore,
    recorder: AuditRecorder,
    partner: Partner,
    object_id: str,
    version: str | None = None,
) -> StoredObject:
    """The version (latest when None), or NotFound: the same answer whether it does
    not exist or ``partner`` may not receive it, so a look-up reveals nothing. Of an
    observable several partners hold copies of, the caller's own copy if it has one,
    else the latest accepted of those it may receive."""
    copies = await store.object_copies(object_id, version or None)
    visible = [c for c in copies if policy.may_receive(partner, c.audience)]
    own = [c for c in visible if c.submitter == partner.partner_id]
    stored = max(own or visible, key=lambda c: c.seq, default=None)
    if stored is None:
        # What was asked for, not what is held: the entry must not reveal it either.
        miss = Event(
            Action.LOOKUP,
            partner.partner_id,
            time.time(),
            object_id=object_id,
            version=version or "",
            detail={"found": False},
        )
        await recorder.record([miss])
        at = f" version {version}" if version else ""
        raise NotFound(f"no object {object_id}{at} that partner {partner.partner_id} may see")
    hit = Event(
        Action.LOOKUP,
        partner.partner_id,
        time.time(),
        object_id=object_id,
        version=stored.obj.version,
        digest=body_digest(stored.obj.body),
        owner=stored.submitter,
        detail={"found": True},
    )
    await recorder.record([hit])
    return stored
