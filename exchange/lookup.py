"""Object look-ups: one version of an object, if the caller may see it."""

from __future__ import annotations

from exchange import policy
from exchange.errors import NotFound
from exchange.model import Partner, StoredObject
from exchange.store import Store

__all__ = ["get_object"]


async def get_object(
    store: Store, partner: Partner, object_id: str, version: str | None = None
) -> StoredObject:
    """The version (latest when None), or NotFound: the same answer whether it does
    not exist or ``partner`` may not receive it, so a look-up reveals nothing."""
    stored = await store.get_object(object_id, version or None)
    if stored is None or not policy.may_receive(partner, stored.audience):
        at = f" version {version}" if version else ""
        raise NotFound(f"no object {object_id}{at} that partner {partner.partner_id} may see")
    return stored
