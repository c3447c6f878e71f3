"""Who may receive what. The one place that answers it.

Every delivery path asks ``may_receive``: topic routing in the relay (through
``audience``/``topics_for``, which ``may_receive`` is built on), the Subscribe
stream's re-check at delivery time, and later look-ups and audit queries.

Rules until community and recipient audiences exist:
- TLP:CLEAR and TLP:GREEN go to every active partner;
- TLP:AMBER, TLP:AMBER+STRICT and TLP:RED go back only to their submitter;
- the submitter always receives its own objects; a disabled partner receives nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.model import Partner, Tlp

__all__ = [
    "SHARED_TOPICS",
    "Audience",
    "audience",
    "may_receive",
    "partner_topic",
    "subscription_topics",
    "topics_for",
]

_EVERYONE = frozenset({Tlp.CLEAR, Tlp.GREEN})


@dataclass(frozen=True, slots=True)
class Audience:
    """Who an object is for: everyone, or exactly these partner ids."""

    everyone: bool
    partners: frozenset[str]


def audience(*, tlp: Tlp, submitter: str) -> Audience:
    return Audience(everyone=tlp in _EVERYONE, partners=frozenset({submitter}))


def may_receive(partner: Partner, *, tlp: Tlp, submitter: str) -> bool:
    """May ``partner`` receive an object of this TLP submitted by ``submitter``?"""
    if partner.disabled:
        return False
    aud = audience(tlp=tlp, submitter=submitter)
    return aud.everyone or partner.partner_id in aud.partners


# Bus topics, one per audience (the Kafka bus puts them under its topic prefix).
SHARED_TOPICS = ("clear", "green")


def partner_topic(partner_id: str) -> str:
    return f"partner.{partner_id}"


def topics_for(*, tlp: Tlp, submitter: str) -> list[str]:
    """The topics an object is published to: its audience's topics, so that a
    partner's own Kafka consumer can be granted exactly its topics by ACL."""
    aud = audience(tlp=tlp, submitter=submitter)
    if aud.everyone:
        return ["clear" if tlp is Tlp.CLEAR else "green"]
    return [partner_topic(p) for p in sorted(aud.partners)]


def subscription_topics(partner: Partner) -> list[str]:
    """Every topic that may hold something ``partner`` is entitled to."""
    return [*SHARED_TOPICS, partner_topic(partner.partner_id)]
