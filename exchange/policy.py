"""Who may receive what. The one place that answers it.

``may_receive`` is the decision. Every delivery path asks it: topic routing in
the relay (``topics_for`` is built on the same rules, and asks ``may_receive``
itself when it fans out to partners), the Subscribe stream's re-check of every
record at delivery time, object look-ups, and audit queries.

The rules (TLP 2.0):
- the submitter always receives its own objects; a disabled partner receives nothing;
- otherwise only partners with the ``subscribe`` role receive anything;
- a partner named as a recipient receives the object;
- a partner of a kind the submitter excluded receives nothing else;
- TLP:CLEAR and TLP:GREEN: every other partner;
- TLP:AMBER: members of the audience's communities;
- TLP:AMBER+STRICT and TLP:RED: named recipients only.

An audience is fixed when an object's first version is accepted. A later version
may widen it, never narrow it (``widen``): whoever could receive an earlier
version also receives every later one, a revocation included, so that nobody
keeps acting on something its creator withdrew.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from exchange.errors import InvalidArgument
from exchange.model import (
    TLP_ORDER,
    Audience,
    AudienceRequest,
    Partner,
    Rejection,
    Role,
    Tlp,
    ValidObject,
)

__all__ = [
    "SHARED_TOPICS",
    "audience_for",
    "audiences_for",
    "audit_scope",
    "check_request",
    "check_request_size",
    "community_topic",
    "delivers_from",
    "kept_notice",
    "may_receive",
    "partner_topic",
    "seen_on",
    "subscription_topics",
    "topics_for",
    "widen",
]

_EVERYONE = frozenset({Tlp.CLEAR, Tlp.GREEN})
_NAMED_ONLY = frozenset({Tlp.AMBER_STRICT, Tlp.RED})


def may_receive(partner: Partner, audience: Audience) -> bool:  # noqa: PLR0911 (the rules, in order)
    """May ``partner`` receive an object version with this audience?"""
    if partner.disabled:
        return False
    if partner.partner_id == audience.submitter:
        return True
    if Role.SUBSCRIBE not in partner.roles:
        return False
    if partner.partner_id in audience.recipients or partner.partner_id in audience.implied:
        return True
    if partner.kind in audience.excluded_kinds:
        return False
    if audience.tlp in _EVERYONE:
        return True
    if audience.tlp is Tlp.AMBER:
        return not partner.communities.isdisjoint(audience.communities)
    return False


def audit_scope(partner: Partner) -> str:
    """Whose audit entries ``partner`` may read: "" for all (the ``audit`` role),
    else its own partner id, meaning the entries of its own actions and about the
    objects it submitted (who received what it shared)."""
    if not partner.disabled and Role.AUDIT in partner.roles:
        return ""
    return partner.partner_id


# -- building an audience at submission -------------------------------------------------


def check_request(
    request: AudienceRequest,
    *,
    partners: Mapping[str, Partner],
    communities: Iterable[str],
) -> None:
    """Refuse a submission's audience naming an unknown community or partner, or
    naming a recipient of a kind it excludes (``partners``: every registered one)."""
    missing = sorted(request.communities - set(communities))
    if missing:
        raise InvalidArgument(
            f"unknown communit{'y' if len(missing) == 1 else 'ies'} {_listed(missing)}"
            " in the audience; see `exchange community list` for the names"
        )
    unknown = sorted(r for r in request.recipients if r not in partners)
    if unknown:
        raise InvalidArgument(
            f"unknown partner{'' if len(unknown) == 1 else 's'} {_listed(unknown)} among"
            " the recipients; name recipients by partner id"
        )
    for pid in sorted(request.recipients):
        kind = partners[pid].kind
        if kind in request.excluded_kinds:
            raise InvalidArgument(
                f"recipient {pid} is a {kind} partner, a kind this submission excludes;"
                " drop the recipient or the exclusion"
            )


def check_request_size(request: AudienceRequest, most: int) -> None:
    """Refuse an audience naming more communities and recipients than ``most``
    (limits.max_audience_names) before anything looks them up."""
    named = len(request.communities) + len(request.recipients)
    if named > most:
        raise InvalidArgument(
            f"the audience names {named:,} communities and recipients; at most {most:,}"
            " (limits.max_audience_names): share with a community instead of naming"
            " each partner"
        )


def _listed(names: list[str], most: int = 5) -> str:
    """Names for an error message, bounded however many and long the caller sent."""
    shown = [n if len(n) <= 80 else n[:77] + "..." for n in names[:most]]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(shown) + more


def audience_for(
    obj: ValidObject,
    submitter: Partner,
    request: AudienceRequest,
    *,
    implied_recipients: Iterable[Partner] = (),
    first_version: bool = True,
) -> Audience | Rejection:
    """The audience an accepted ``obj`` gets, or why it is refused.

    ``implied_recipients``: partners the object goes to whatever was named (the
    creator of the indicator a sighting is of), unless their kind is excluded:
    the submitter's explicit exclusion wins over an implied route. They are kept apart
    (``Audience.implied``) and never decide the outcome: whether a sighting is accepted
    must not tell its submitter whether the sighted object exists, or whose it is, so a
    TLP:RED sighting needs no recipient named, held or not. A later version
    (``first_version`` False) keeps its object's earlier recipients (``widen``), so a
    TLP:RED one needs none named either."""
    recipients = request.recipients - {submitter.partner_id}
    implied = frozenset(
        p.partner_id
        for p in implied_recipients
        if p.kind not in request.excluded_kinds and p.partner_id != submitter.partner_id
    )
    communities: frozenset[str] = frozenset()
    if obj.tlp is Tlp.AMBER:
        named = request.communities or request.recipients
        communities = request.communities if named else submitter.communities
    elif obj.tlp is Tlp.RED and first_version and not recipients and not obj.refers_to:
        # A sighting names its recipient implicitly (the creator of what it sights), so
        # it is accepted whether or not that object is held: the answer must not say.
        return Rejection(
            obj.object_id,
            "object_marking_refs",
            "TLP:RED objects go to named partners only: name the recipients of this"
            " submission (recipients=[...] / --recipient PARTNER_ID), or use another TLP",
            obj.index,
            obj.version,
        )
    return Audience(
        tlp=obj.tlp,
        submitter=submitter.partner_id,
        communities=communities,
        recipients=recipients,
        excluded_kinds=request.excluded_kinds,
        implied=implied - recipients,
    )


def audiences_for(
    routes: Iterable[tuple[ValidObject, Sequence[Partner], bool]],
    submitter: Partner,
    request: AudienceRequest,
) -> list[Audience | Rejection]:
    """``audience_for`` of each (object, implied recipients, first version) of one
    submission, in order. The objects of a bundle share a few distinct answers, so each
    is decided once: by everything ``audience_for`` reads of an object besides the names
    a rejection quotes (its TLP, whether it refers to another object) and of the implied
    recipients (id and kind)."""
    decided: dict[tuple[object, ...], Audience] = {}
    answers: list[Audience | Rejection] = []
    for obj, implied, first_version in routes:
        key = (
            obj.tlp,
            bool(obj.refers_to),
            first_version,
            tuple((p.partner_id, p.kind) for p in implied),
        )
        answer: Audience | Rejection | None = decided.get(key)
        if answer is None:
            answer = audience_for(
                obj, submitter, request, implied_recipients=implied, first_version=first_version
            )
            if isinstance(answer, Audience):
                decided[key] = answer
        answers.append(answer)
    return answers


def widen(earlier: Audience, later: Audience) -> Audience:
    """The audience of a new version: everyone ``earlier`` reached, plus whom
    ``later`` names. An audience widens, never narrows."""
    return Audience(
        tlp=min(earlier.tlp, later.tlp, key=TLP_ORDER.index),
        submitter=earlier.submitter,
        communities=earlier.communities | later.communities,
        recipients=earlier.recipients | later.recipients,
        excluded_kinds=earlier.excluded_kinds & later.excluded_kinds,
        implied=(earlier.implied | later.implied) - earlier.recipients - later.recipients,
    )


def kept_notice(asked: Audience, kept: Audience) -> str:
    """What to tell a submitter whose new version reaches more partners than it asked
    for, because it keeps the audience of the object's earlier versions."""
    if kept is asked:  # a first version: nothing kept (the common case, kept cheap)
        return ""
    rank = TLP_ORDER.index
    named_matter = asked.tlp not in _EVERYONE or bool(asked.excluded_kinds)
    wider = (
        rank(kept.tlp) < rank(asked.tlp)
        or kept.excluded_kinds < asked.excluded_kinds
        or (named_matter and not kept.recipients <= asked.recipients)
        or (kept.tlp is Tlp.AMBER and not kept.communities <= asked.communities)
    )
    if not wider:
        return ""
    return (
        "this version keeps the wider audience of the object's earlier versions (an"
        f" audience never narrows): TLP:{kept.tlp.value.upper()} routing"
        + (f", communities {', '.join(sorted(kept.communities))}" if kept.communities else "")
        + (f", recipients {', '.join(sorted(kept.recipients))}" if kept.recipients else "")
        + (
            f", excluding {', '.join(sorted(kept.excluded_kinds))} partners"
            if kept.excluded_kinds
            else ""
        )
        + "; everyone who received an earlier version receives it"
    )


# -- bus topics, one per audience ---------------------------------------------------------
# Kafka ACLs can then grant a partner's own consumer exactly its topics
# (deploy/README.md); the Kafka bus puts the names under its topic prefix.

SHARED_TOPICS = ("clear", "green")


_PARTNER_TOPIC = "partner."


def partner_topic(partner_id: str) -> str:
    return f"{_PARTNER_TOPIC}{partner_id}"


def community_topic(name: str) -> str:
    return f"community.{name}"


def topics_for(audience: Audience, partners: Iterable[Partner]) -> list[str]:
    """The topics an object version is published to, most shared first.

    Every reader of a topic may receive every record on it. An audience that
    excludes kinds of partner cannot use a shared or community topic (an excluded
    member reads those), so it is fanned out to the topics of the partners that
    ``may_receive`` it now (``partners``: every registered one)."""
    if audience.excluded_kinds:
        return sorted(partner_topic(p.partner_id) for p in partners if may_receive(p, audience))
    topics: list[str] = []
    if audience.tlp in _EVERYONE:
        topics.append(audience.tlp.value)
    elif audience.tlp is Tlp.AMBER:
        topics += [community_topic(c) for c in sorted(audience.communities)]
    named = audience.recipients | audience.implied | {audience.submitter}
    if audience.tlp not in _EVERYONE:
        topics += [partner_topic(p) for p in sorted(named)]
    return topics


def seen_on(topic: str, audience: Audience, routed_to: Iterable[str]) -> tuple[Audience, list[str]]:
    """What the readers of ``topic`` may learn of a version's audience and routing: the
    record published there carries these (every header is readable by every reader of
    its topic, and a partner's own Kafka consumer reads its topic directly).

    A partner topic's reader learns whether it is itself a recipient, never who else is
    (the creator a sighting was routed to would tell the sighting's submitter whose
    indicator it sighted); shared and community topics show no recipients at all. The
    routing keeps the shared and community topics and this one: enough for a reader of
    several topics to take the record from the first of them (``delivers_from``)."""
    reader = topic.removeprefix(_PARTNER_TOPIC)
    visible = frozenset({reader}) if reader != topic else frozenset()
    shown = Audience(
        tlp=audience.tlp,
        submitter=audience.submitter,
        communities=audience.communities,
        recipients=audience.recipients & visible,
        excluded_kinds=audience.excluded_kinds,
        implied=audience.implied & visible,
    )
    return shown, [t for t in routed_to if t == topic or not t.startswith(_PARTNER_TOPIC)]


def subscription_topics(partner: Partner) -> list[str]:
    """Every topic that may hold something ``partner`` is entitled to."""
    return [
        *SHARED_TOPICS,
        *(community_topic(c) for c in sorted(partner.communities)),
        partner_topic(partner.partner_id),
    ]


def delivers_from(topic: str, routed_to: Iterable[str], subscribed: frozenset[str]) -> bool:
    """Is ``topic`` the one a subscriber reading ``subscribed`` takes a record from?

    A record published to several of a partner's topics (a community and a named
    recipient, say) is delivered once: from the first of its topics, in routing
    order, that the partner reads."""
    # A loop, not next() over a generator: every stream asks this for every record it
    # reads, and the generator cost four times as much.
    for routed in routed_to:
        if routed in subscribed:
            return routed == topic
    return False
