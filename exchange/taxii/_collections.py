"""The collections a partner sees: they mirror its entitlements.

- ``received``: everything it may receive (the Subscribe(from_beginning) set), read only;
- ``inbox``: write only, POST = Submit with the partner's default audience;
- one per community it belongs to: read what was shared with that community, and POST
  = Submit to that community (TLP:AMBER unless the objects are marked otherwise).

Ids are fixed (UUIDv5 of the name), the same for every partner; what a collection holds
depends on the caller. A community collection of a community the caller is not in is
answered 404, as one that does not exist.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from exchange import policy
from exchange.model import AudienceRequest, Partner, Role, StoredObject

__all__ = ["TaxiiCollection", "collection_of", "collections_of"]

_NAMESPACE = uuid.UUID("5c3c4c70-9f6c-5a4e-8d7e-6b1f3c3a7e10")
RECEIVED_ID = str(uuid.uuid5(_NAMESPACE, "received"))
INBOX_ID = str(uuid.uuid5(_NAMESPACE, "inbox"))


def _community_id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"community:{name}"))


@dataclass(frozen=True, slots=True)
class TaxiiCollection:
    id: str
    title: str
    description: str
    readable: bool  # by design (the inbox is not); the partner's role decides the rest
    writable: bool
    community: str | None = None

    def can_read(self, partner: Partner) -> bool:
        return self.readable and Role.SUBSCRIBE in partner.roles and not partner.disabled

    def can_write(self, partner: Partner) -> bool:
        return self.writable and Role.SUBMIT in partner.roles and not partner.disabled

    def holds(self, partner: Partner, stored: StoredObject, registered_at: float) -> bool:
        """Whether ``stored`` is in this collection for ``partner`` (registered at
        ``registered_at``): always through policy.may_receive, the one decision every
        delivery path takes, and the rule Subscribe follows for audiences that exclude
        kinds of partner: they are resolved to the partners registered when the object
        was published (policy.topics_for), so a partner registered after it was
        accepted does not receive it unless named."""
        audience = stored.audience
        if not policy.may_receive(partner, audience):
            return False
        if (
            audience.excluded_kinds
            and stored.accepted_at < registered_at
            and partner.partner_id != audience.submitter
            and partner.partner_id not in audience.recipients
            and partner.partner_id not in audience.implied
        ):
            return False
        return self.community is None or self.community in audience.communities

    def audience(self) -> AudienceRequest:
        """What a POST here submits to."""
        if self.community is None:
            return AudienceRequest()
        return AudienceRequest(communities=frozenset({self.community}))

    def resource(self, partner: Partner) -> dict[str, object]:
        """The TAXII collection resource, as ``partner`` sees it."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "can_read": self.can_read(partner),
            "can_write": self.can_write(partner),
            "media_types": ["application/stix+json;version=2.1"],
        }


def collections_of(partner: Partner) -> list[TaxiiCollection]:
    found = [
        TaxiiCollection(
            RECEIVED_ID,
            "Received",
            "Every object version you may receive: the same as a Subscribe stream from the"
            " beginning.",
            readable=True,
            writable=False,
        ),
        TaxiiCollection(
            INBOX_ID,
            "Inbox",
            "Add objects here to submit them with your default audience (TLP:AMBER to your"
            " communities for unmarked objects).",
            readable=False,
            writable=True,
        ),
    ]
    for name in sorted(partner.communities):
        found.append(
            TaxiiCollection(
                _community_id(name),
                f"Community {name}",
                f"Objects shared with the community {name}; objects added here are shared"
                " with it (TLP:AMBER unless they are marked otherwise).",
                readable=True,
                writable=True,
                community=name,
            )
        )
    return found


def collection_of(partner: Partner, collection_id: str) -> TaxiiCollection | None:
    """The collection, or None when it does not exist for ``partner``."""
    return next((c for c in collections_of(partner) if c.id == collection_id), None)
