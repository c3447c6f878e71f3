"""The policy decision: each rule as a readable example, then properties that
tie routing (Kafka topics) and delivery (the stream's re-check) together."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange import policy
from exchange.errors import InvalidArgument
from exchange.model import (
    Audience,
    AudienceRequest,
    Partner,
    PartnerKind,
    Rejection,
    Role,
    Tlp,
    ValidObject,
)

NGO = Partner(
    "harbor-light", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44",
    kind=PartnerKind.NGO, communities=frozenset({"sea-taskforce"}),
)  # fmt: skip
PLATFORM = Partner(
    "kestrel", "Kestrel Social", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7",
    kind=PartnerKind.TECH, communities=frozenset({"sea-taskforce"}),
)  # fmt: skip
MINISTRY = Partner(
    "northgate", "Northgate Ministry", "identity--4a84ce21-155b-5144-9e57-4e3a861176e2",
    kind=PartnerKind.GOVERNMENT, communities=frozenset({"sea-taskforce", "regulators"}),
)  # fmt: skip
PAYMENTS = Partner(
    "meridian", "Meridian Pay", "identity--3e3c1da6-114f-54c2-bf10-d3c20b498d9c",
    kind=PartnerKind.TECH,
)  # fmt: skip
EVERYONE = (NGO, PLATFORM, MINISTRY, PAYMENTS)


def receivers(audience: Audience, partners: tuple[Partner, ...] = EVERYONE) -> set[str]:
    return {p.partner_id for p in partners if policy.may_receive(p, audience)}


def aud(tlp: Tlp, **fields: object) -> Audience:
    return Audience(tlp=tlp, submitter=NGO.partner_id, **fields)  # type: ignore[arg-type]


def obj(tlp: Tlp) -> ValidObject:
    return ValidObject("indicator--1", "indicator", "2026-01-01T00:00:00.000Z", NGO.identity_id,
                       tlp, b"{}")  # fmt: skip


# -- the rules, one example each -----------------------------------------------------------


@pytest.mark.parametrize("tlp", [Tlp.CLEAR, Tlp.GREEN])
def test_clear_and_green_go_to_every_partner_with_the_subscribe_role(tlp: Tlp) -> None:
    submit_only = dataclasses.replace(PAYMENTS, roles=frozenset({Role.SUBMIT}))
    assert receivers(aud(tlp), (*EVERYONE[:3], submit_only)) == {
        "harbor-light", "kestrel", "northgate",
    }  # fmt: skip


def test_amber_goes_to_the_named_communities_and_recipients() -> None:
    audience = aud(Tlp.AMBER, communities=frozenset({"regulators"}),
                   recipients=frozenset({"meridian"}))  # fmt: skip
    assert receivers(audience) == {"harbor-light", "northgate", "meridian"}


def test_amber_with_nobody_named_goes_to_the_submitters_communities() -> None:
    audience = policy.audience_for(obj(Tlp.AMBER), NGO, AudienceRequest())
    assert isinstance(audience, Audience)
    assert audience.communities == {"sea-taskforce"}
    assert receivers(audience) == {"harbor-light", "kestrel", "northgate"}


def test_amber_naming_only_recipients_does_not_add_the_submitters_communities() -> None:
    audience = policy.audience_for(
        obj(Tlp.AMBER), NGO, AudienceRequest(recipients=frozenset({"meridian"}))
    )
    assert isinstance(audience, Audience)
    assert receivers(audience) == {"harbor-light", "meridian"}


@pytest.mark.parametrize("tlp", [Tlp.AMBER_STRICT, Tlp.RED])
def test_amber_strict_and_red_go_to_named_partners_only(tlp: Tlp) -> None:
    request = AudienceRequest(
        communities=frozenset({"sea-taskforce"}), recipients=frozenset({"meridian"})
    )
    audience = policy.audience_for(obj(tlp), NGO, request)
    assert isinstance(audience, Audience)
    assert receivers(audience) == {"harbor-light", "meridian"}


def test_red_without_recipients_is_refused_with_a_reason() -> None:
    for request in (AudienceRequest(), AudienceRequest(recipients=frozenset({NGO.partner_id}))):
        refused = policy.audience_for(obj(Tlp.RED), NGO, request)
        assert isinstance(refused, Rejection)
        assert refused.property == "object_marking_refs"
        assert "recipient" in refused.expected


def test_excluded_kinds_receive_nothing_unless_named() -> None:
    audience = aud(Tlp.GREEN, excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))
    assert receivers(audience) == {"harbor-light", "kestrel", "meridian"}
    amber = aud(Tlp.AMBER, communities=frozenset({"sea-taskforce"}),
                excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))  # fmt: skip
    assert receivers(amber) == {"harbor-light", "kestrel"}


def test_the_submitter_always_receives_its_own_objects_and_a_disabled_partner_nothing() -> None:
    submit_only = dataclasses.replace(NGO, roles=frozenset({Role.SUBMIT}))
    for tlp in Tlp:
        assert policy.may_receive(submit_only, aud(tlp))
        disabled = dataclasses.replace(PLATFORM, disabled=True)
        assert not policy.may_receive(disabled, aud(tlp, recipients=frozenset({"kestrel"})))


def test_a_sighting_goes_back_to_the_indicators_creator_unless_its_kind_is_excluded() -> None:
    sighting = dataclasses.replace(
        obj(Tlp.AMBER_STRICT), object_type="sighting", refers_to="indicator--9"
    )
    audience = policy.audience_for(sighting, NGO, AudienceRequest(), implied_recipients=[MINISTRY])
    assert isinstance(audience, Audience)
    assert receivers(audience) == {"harbor-light", "northgate"}
    # The creator is an implied recipient, never one the submitter named.
    assert audience.recipients == frozenset()
    assert audience.implied == {"northgate"}
    excluding = AudienceRequest(excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))
    green = dataclasses.replace(sighting, tlp=Tlp.GREEN)
    audience = policy.audience_for(green, NGO, excluding, implied_recipients=[MINISTRY])
    assert isinstance(audience, Audience)
    assert "northgate" not in receivers(audience)


def test_unknown_names_and_contradictions_in_a_request_are_refused() -> None:
    partners = {p.partner_id: p for p in EVERYONE}
    with pytest.raises(InvalidArgument, match="unknown community nowhere"):
        policy.check_request(
            AudienceRequest(communities=frozenset({"nowhere"})),
            partners=partners,
            communities=["sea-taskforce"],
        )
    with pytest.raises(InvalidArgument, match="unknown partner ghost"):
        policy.check_request(
            AudienceRequest(recipients=frozenset({"ghost"})), partners=partners, communities=[]
        )
    with pytest.raises(InvalidArgument, match="recipient northgate is a government partner"):
        policy.check_request(
            AudienceRequest(
                recipients=frozenset({"northgate"}),
                excluded_kinds=frozenset({PartnerKind.GOVERNMENT}),
            ),
            partners=partners,
            communities=[],
        )


def test_a_new_version_keeps_the_wider_audience_and_says_so() -> None:
    earlier = aud(Tlp.GREEN)
    later = aud(Tlp.RED, recipients=frozenset({"meridian"}))
    kept = policy.widen(earlier, later)
    assert receivers(kept) == receivers(earlier) | receivers(later)
    assert "keeps the wider audience" in policy.kept_notice(later, kept)
    assert policy.kept_notice(earlier, policy.widen(earlier, earlier)) == ""
    # Kept names that reach nobody new (GREEN reaches them anyway) are not news.
    named = aud(Tlp.GREEN, recipients=frozenset({"meridian"}))
    assert policy.kept_notice(aud(Tlp.GREEN), policy.widen(named, aud(Tlp.GREEN))) == ""
    # Dropping an exclusion is a widening the later version asked for: no notice either,
    # but keeping an earlier version's wider reach is.
    not_gov = aud(Tlp.GREEN, excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))
    assert policy.kept_notice(aud(Tlp.GREEN), policy.widen(not_gov, aud(Tlp.GREEN))) == ""
    assert policy.kept_notice(not_gov, policy.widen(aud(Tlp.GREEN), not_gov)) != ""


def test_topics_mirror_the_audience() -> None:
    assert policy.topics_for(aud(Tlp.GREEN), EVERYONE) == ["green"]
    amber = aud(
        Tlp.AMBER, communities=frozenset({"regulators"}), recipients=frozenset({"meridian"})
    )
    assert policy.topics_for(amber, EVERYONE) == [
        "community.regulators", "partner.harbor-light", "partner.meridian",
    ]  # fmt: skip
    # Excluding a kind cannot use a shared topic: fanned out to who may receive it.
    excluding = aud(Tlp.GREEN, excluded_kinds=frozenset({PartnerKind.GOVERNMENT}))
    assert policy.topics_for(excluding, EVERYONE) == [
        "partner.harbor-light", "partner.kestrel", "partner.meridian",
    ]  # fmt: skip


# -- properties ------------------------------------------------------------------------------

IDS = ["p0", "p1", "p2", "p3", "p4"]
COMMUNITIES = ["c0", "c1", "c2"]

partners_st = st.lists(
    st.builds(
        lambda kind, roles, communities, disabled: (kind, roles, communities, disabled),
        st.sampled_from(list(PartnerKind)),
        st.frozensets(st.sampled_from(list(Role))),
        st.frozensets(st.sampled_from(COMMUNITIES)),
        st.booleans(),
    ),
    min_size=len(IDS),
    max_size=len(IDS),
).map(
    lambda specs: tuple(
        Partner(pid, pid, f"identity--{pid}", kind=k, roles=r, communities=c, disabled=d)
        for pid, (k, r, c, d) in zip(IDS, specs, strict=True)
    )
)
audiences_st = st.builds(
    Audience,
    tlp=st.sampled_from(list(Tlp)),
    submitter=st.sampled_from(IDS),
    communities=st.frozensets(st.sampled_from(COMMUNITIES)),
    recipients=st.frozensets(st.sampled_from(IDS)),
    excluded_kinds=st.frozensets(st.sampled_from(list(PartnerKind))),
)


@given(partners=partners_st, audience=audiences_st)
def test_kafka_topics_give_an_active_subscriber_exactly_what_it_may_receive(
    partners: tuple[Partner, ...], audience: Audience
) -> None:
    """No leak through broker ACLs and no loss: an active partner with the subscribe
    role reads (by its topics) a record exactly when the policy lets it receive it."""
    routed = policy.topics_for(audience, partners)
    for p in partners:
        reads = set(policy.subscription_topics(p))
        if not p.disabled and Role.SUBSCRIBE in p.roles:
            assert bool(reads.intersection(routed)) == policy.may_receive(p, audience), p
        elif policy.may_receive(p, audience):
            # Only the submitter itself (receiving its own objects) gets here.
            assert p.partner_id == audience.submitter
            assert reads.intersection(routed) or p.disabled


@given(partners=partners_st, audience=audiences_st)
def test_each_receiver_takes_a_record_from_exactly_one_topic(
    partners: tuple[Partner, ...], audience: Audience
) -> None:
    routed = policy.topics_for(audience, partners)
    for p in partners:
        reads = frozenset(policy.subscription_topics(p))
        taken = [t for t in routed if t in reads and policy.delivers_from(t, routed, reads)]
        assert len(taken) == (1 if reads.intersection(routed) else 0)


@given(partners=partners_st, earlier=audiences_st, later=audiences_st)
def test_an_audience_only_widens(
    partners: tuple[Partner, ...], earlier: Audience, later: Audience
) -> None:
    later = dataclasses.replace(later, submitter=earlier.submitter)
    kept = policy.widen(earlier, later)
    for p, a in itertools.product(partners, (earlier, later)):
        if policy.may_receive(p, a):
            assert policy.may_receive(p, kept)


def test_an_audience_error_stays_short_whatever_was_sent() -> None:
    request = AudienceRequest(
        recipients=frozenset(f"ghost-{i}-" + "x" * 10_000 for i in range(500))
    )
    with pytest.raises(InvalidArgument, match="and 495 more") as refused:
        policy.check_request(request, partners={}, communities=[])
    assert len(refused.value.message) < 1000


def test_whether_a_sighting_is_accepted_does_not_depend_on_what_it_sights() -> None:
    # A TLP:RED sighting naming nobody: accepted the same way whether or not the sighted
    # indicator is held by another partner (who is then its implied recipient); any
    # other TLP:RED object naming nobody is refused.
    sighting = dataclasses.replace(obj(Tlp.RED), object_type="sighting", refers_to="indicator--9")
    held = policy.audience_for(sighting, NGO, AudienceRequest(), implied_recipients=[MINISTRY])
    unknown = policy.audience_for(sighting, NGO, AudienceRequest(), implied_recipients=[])
    assert isinstance(held, Audience) and isinstance(unknown, Audience)
    assert receivers(held) == {"harbor-light", "northgate"}
    assert receivers(unknown) == {"harbor-light"}
    assert isinstance(policy.audience_for(obj(Tlp.RED), NGO, AudienceRequest()), Rejection)
    named = AudienceRequest(recipients=frozenset({"kestrel"}))
    with_creator = policy.audience_for(sighting, NGO, named, implied_recipients=[MINISTRY])
    without = policy.audience_for(sighting, NGO, named, implied_recipients=[])
    assert isinstance(with_creator, Audience)
    assert isinstance(without, Audience)
    assert receivers(with_creator) == {"harbor-light", "kestrel", "northgate"}
    # The submitter's own topic shows the same audience and routing either way.
    topics = policy.topics_for(with_creator, EVERYONE)
    assert "partner.northgate" in topics
    mine = policy.seen_on("partner.harbor-light", with_creator, topics)
    assert mine == policy.seen_on(
        "partner.harbor-light", without, policy.topics_for(without, EVERYONE)
    )
    assert mine[0].recipients == frozenset()
    assert mine[1] == ["partner.harbor-light"]


def test_a_partner_topic_shows_its_reader_and_nobody_else() -> None:
    audience = aud(
        Tlp.AMBER,
        communities=frozenset({"sea-taskforce"}),
        recipients=frozenset({"kestrel", "meridian"}),
        implied=frozenset({"northgate"}),
    )
    topics = policy.topics_for(audience, EVERYONE)
    assert topics == [
        "community.sea-taskforce",
        "partner.harbor-light",
        "partner.kestrel",
        "partner.meridian",
        "partner.northgate",
    ]
    shown, routed = policy.seen_on("partner.kestrel", audience, topics)
    assert shown.recipients == {"kestrel"} and shown.implied == frozenset()
    assert routed == ["community.sea-taskforce", "partner.kestrel"]
    shown, routed = policy.seen_on("partner.northgate", audience, topics)
    assert shown.recipients == frozenset() and shown.implied == {"northgate"}
    assert policy.may_receive(MINISTRY, shown)
    shown, routed = policy.seen_on("community.sea-taskforce", audience, topics)
    assert shown.recipients == frozenset() and shown.implied == frozenset()
    assert routed == ["community.sea-taskforce"]
    # Each reader still takes the record from exactly one of its topics.
    for partner in EVERYONE:
        mine = set(policy.subscription_topics(partner))
        takes = [
            t
            for t in topics
            if t in mine
            and policy.delivers_from(t, policy.seen_on(t, audience, topics)[1], frozenset(mine))
        ]
        assert len(takes) == (1 if policy.may_receive(partner, audience) else 0), partner


@given(
    routes=st.lists(
        st.tuples(
            st.sampled_from(list(Tlp)),
            st.booleans(),  # a sighting (refers to another object)
            st.lists(st.sampled_from(EVERYONE), max_size=2),  # implied recipients
            st.booleans(),  # first version
        ),
        max_size=12,
    ),
    request=st.builds(
        AudienceRequest,
        communities=st.frozensets(st.sampled_from(["sea-taskforce", "regulators"])),
        recipients=st.frozensets(st.sampled_from([p.partner_id for p in EVERYONE])),
        excluded_kinds=st.frozensets(st.sampled_from(list(PartnerKind))),
    ),
)
def test_a_bundles_audiences_are_each_objects_audience_for(
    routes: list[tuple[Tlp, bool, list[Partner], bool]], request: AudienceRequest
) -> None:
    """audiences_for decides equal objects once: the answers are audience_for's."""
    objects = [
        dataclasses.replace(
            obj(tlp),
            object_id=f"indicator--{i}",
            index=i,
            refers_to="indicator--x" if sighting else "",
        )
        for i, (tlp, sighting, _, _) in enumerate(routes)
    ]
    batch = policy.audiences_for(
        ((o, implied, first) for o, (_, _, implied, first) in zip(objects, routes, strict=True)),
        NGO,
        request,
    )
    one_by_one = [
        policy.audience_for(o, NGO, request, implied_recipients=implied, first_version=first)
        for o, (_, _, implied, first) in zip(objects, routes, strict=True)
    ]
    assert batch == one_by_one
