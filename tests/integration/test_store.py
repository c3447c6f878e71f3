"""Both stores, on a real SQLite file and a real PostgreSQL database: the registry
(partners, communities, credentials), integrity rules, audiences, observables held
per submitter, the outbox and its set-aside rows, and a disk that fills up.
PostgreSQL-only behaviour (concurrency, leases, an unreachable database) is in
test_store_postgres.py."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from exchange import policy
from exchange.auth import new_token_credential
from exchange.errors import AlreadyExists, InvalidArgument, NotFound, StoreFull, Unavailable
from exchange.metrics import Metrics
from exchange.model import (
    Audience,
    Community,
    Credential,
    CredentialKind,
    Partner,
    PartnerKind,
    Role,
    Tlp,
    ValidObject,
)
from exchange.store import CommitOutcome, Committed, PublishedQuery, SetAsideRow, Store
from exchange.store._common import SET_ASIDE_REASON_CHARS
from exchange.store.sqlite import SqliteStore
from tests.diskspace import MIB, SmallDisk, database_on_small_disk, small_disk
from tests.postgres import STORES, PostgresServer, StoreFactory, store_factory

GULF = Community("gulf-ngos", "NGOs around the Gulf")
NGO = Partner(
    "ngo-1",
    "Harbor Light",
    "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44",
    kind=PartnerKind.NGO,
    sectors=("non-profit", "shelter"),
    communities=frozenset({GULF.name}),
)
PLATFORM = Partner(
    "plat-1",
    "Kestrel",
    "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7",
    kind=PartnerKind.TECH,
    sectors=("technology",),
    roles=frozenset({Role.SUBMIT, Role.SUBSCRIBE, Role.AUDIT}),
    default_tlp=Tlp.GREEN,
)
NGO_TOKEN, _ = new_token_credential(NGO.partner_id, now=10.0)
PLATFORM_TOKEN, _ = new_token_credential(PLATFORM.partner_id, now=11.0)
INDICATOR = "indicator--6bd06048-f8e8-5524-a440-95e258a3588a"
OTHER_INDICATOR = "indicator--50b13f1c-307d-5db3-83b1-125a1e79b9ea"
# An observable (SCO): its id is a UUIDv5 of its value, the same for whoever submits it.
EMAIL = "email-addr--5c6c0e3a-8a0c-5f8b-9d5c-4b2f7d1c2e10"


def obj(
    oid: str = INDICATOR,
    version: str = "2026-01-01T00:00:00.000Z",
    creator: str = NGO.identity_id,
    *,
    revoked: bool = False,
    tlp: Tlp = Tlp.GREEN,
) -> ValidObject:
    return ValidObject(
        oid,
        oid.split("--", maxsplit=1)[0],
        version,
        creator,
        tlp,
        f'{{"id":"{oid}","modified":"{version}"}}'.encode(),
        labels=("trafficking:recruitment",),
        revoked=revoked,
    )


def audience(
    tlp: Tlp = Tlp.GREEN,
    submitter: Partner = NGO,
    *,
    communities: Sequence[str] = (),
    recipients: Sequence[str] = (),
    excluded: Sequence[PartnerKind] = (),
) -> Audience:
    return Audience(
        tlp,
        submitter.partner_id,
        frozenset(communities),
        frozenset(recipients),
        frozenset(excluded),
    )


async def commit(
    store: Store, submitter: Partner, *objects: ValidObject | tuple[ValidObject, Audience]
) -> list[Committed]:
    """Commit ``objects``, each with the audience its TLP alone gives unless paired with one."""
    pairs = [o if isinstance(o, tuple) else (o, audience(o.tlp, submitter)) for o in objects]
    return await store.commit_objects(submitter, pairs, 1.0, policy.widen)


def outcomes(committed: list[Committed]) -> list[CommitOutcome]:
    return [c.outcome for c in committed]


def without_receipts(committed: list[Committed]) -> list[Committed]:
    """The results with their audit receipts left out (tests/integration/test_audit_store.py
    checks those)."""
    return [c._replace(receipt=None) for c in committed]


def certificate(partner_id: str, der: bytes = b"a DER certificate", at: float = 20.0) -> Credential:
    return Credential(
        f"crt_{hashlib.sha256(der).hexdigest()[:10]}",
        partner_id,
        CredentialKind.CERTIFICATE,
        hashlib.sha256(der).digest(),
        created_at=at,
        expires_at=at + 3600,
    )


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds (unopened) stores over the same storage (another process, a restart)."""
    return store_factory(request, tmp_path)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    await s.add_community(GULF)
    await s.add_partner(NGO, NGO_TOKEN)
    await s.add_partner(PLATFORM, PLATFORM_TOKEN)
    yield s
    await s.close()


# -- objects --------------------------------------------------------------------------


async def test_versions_duplicates_and_creators(store: Store) -> None:
    first = obj()
    assert outcomes(await commit(store, NGO, first, first)) == [
        CommitOutcome.INSERTED,
        CommitOutcome.DUPLICATE,  # the same id and version twice in one bundle
    ]
    # The same instant written with another precision is the same version.
    same = obj(version="2026-01-01T00:00:00Z")
    newer = obj(version="2026-02-01T00:00:00.000Z")
    assert outcomes(await commit(store, NGO, same, newer)) == [
        CommitOutcome.DUPLICATE,
        CommitOutcome.INSERTED,
    ]
    hijack = obj(version="2026-03-01T00:00:00.000Z", creator=PLATFORM.identity_id)
    assert await commit(store, PLATFORM, hijack) == [Committed(CommitOutcome.NOT_CREATOR)]


async def test_a_commit_that_adds_outbox_rows_wakes_the_relay(store: Store) -> None:
    """on_outbox is the relay's only wake-up: called once per commit that inserted a
    version, never for one that inserted nothing."""
    woken: list[int] = []
    store.on_outbox(lambda: woken.append(len(woken)))
    first = obj()
    await commit(store, NGO, first)
    assert woken == [0]
    await commit(store, NGO, first)  # a duplicate: nothing to publish
    assert woken == [0]
    await commit(store, NGO, obj(version="2026-02-01T00:00:00.000Z"), obj(OTHER_INDICATOR))
    assert woken == [0, 1]


async def test_revoked_objects_get_no_new_version(store: Store) -> None:
    await commit(store, NGO, obj(version="2026-02-01T00:00:00.000Z", revoked=True))
    assert outcomes(await commit(store, NGO, obj(version="2026-03-01T00:00:00.000Z"))) == [
        CommitOutcome.REVOKED
    ]


async def test_a_partners_identity_object_belongs_to_it(store: Store) -> None:
    forged = obj(oid=NGO.identity_id, creator=PLATFORM.identity_id)
    assert outcomes(await commit(store, PLATFORM, forged)) == [CommitOutcome.NOT_CREATOR]
    own = obj(oid=NGO.identity_id)
    assert outcomes(await commit(store, NGO, own)) == [CommitOutcome.INSERTED]


async def test_outbox_holds_what_was_not_published(store: Store, make_store: StoreFactory) -> None:
    a, b = obj(), obj(oid=OTHER_INDICATOR, tlp=Tlp.AMBER)
    asked_b = audience(Tlp.AMBER, communities=[GULF.name], excluded=[PartnerKind.GOVERNMENT])
    await commit(store, NGO, a, (b, asked_b))
    pending = await store.pending_outbox(10)
    assert [p.obj for p in pending] == [a, b]
    assert [p.audience for p in pending] == [audience(Tlp.GREEN), asked_b]
    assert all(p.submitter == NGO.partner_id and p.accepted_at == 1.0 for p in pending)
    await store.mark_published([pending[0].seq], {("green", 0): 5})
    await store.mark_published([], {("green", 0): 3})  # positions never move back
    assert [p.obj.object_id for p in await store.pending_outbox(10)] == [b.object_id]
    assert await store.relay_positions(["green", "clear"]) == {("green", 0): 5}

    # A second store on the same file or database (a restart) sees the same outbox.
    again = make_store()
    await again.open()
    try:
        assert await again.pending_outbox(10) == [pending[1]]
    finally:
        await again.close()


async def test_the_relay_reads_the_outbox_by_count_and_by_bytes(store: Store) -> None:
    a, b, c = obj(), obj(OTHER_INDICATOR), email(NGO)
    await commit(store, NGO, a, b, c)
    sizes = [len(p.obj.body) for p in await store.pending_outbox(10)]
    assert len(sizes) == 3
    assert len(await store.pending_outbox(2, max_bytes=10**9)) == 2
    assert len(await store.pending_outbox(10, max_bytes=sizes[0] + sizes[1])) == 2
    assert len(await store.pending_outbox(10, max_bytes=sizes[0] + sizes[1] - 1)) == 1
    # The oldest row always comes, however large: it must be published some time.
    [oldest] = await store.pending_outbox(10, max_bytes=1)
    assert oldest.obj == a


async def test_rows_the_bus_refused_are_set_aside(store: Store, make_store: StoreFactory) -> None:
    a, b, c = obj(), obj(OTHER_INDICATOR), email(NGO)
    await commit(store, NGO, a, b, c)
    seqs = [p.seq for p in await store.pending_outbox(10)]
    too_large = "MessageSizeTooLargeError: the record is 3,145,728 bytes\nbroker said so"
    # The batch: a and c published, b refused by the bus.
    await store.mark_published(
        [seqs[0], seqs[2]], {("green", 0): 2}, set_aside={seqs[1]: too_large}
    )
    assert await store.pending_outbox(10) == []
    [row] = await store.set_aside_rows()
    assert row == SetAsideRow(
        seqs[1],
        OTHER_INDICATOR,
        b.version,
        NGO.partner_id,
        "MessageSizeTooLargeError: the record is 3,145,728 bytes broker said so",
        row.at,
    )
    assert row.at > 1.0  # when it was set aside, not when it was accepted
    assert await store.relay_positions(["green"]) == {("green", 0): 2}

    # A row set aside a second time (by a relay that had lost its lease) or one that is
    # no longer in the outbox is not set aside again; reasons are bounded.
    await store.mark_published([], {}, set_aside={seqs[0]: "late", seqs[1]: "x" * 5000})
    [row] = await store.set_aside_rows()
    assert row.seq == seqs[1] and row.reason.startswith("MessageSizeTooLarge")

    # Another process (the operator's CLI) sees them; they stay out of the outbox.
    other = make_store()
    await other.open()
    try:
        assert [r.seq for r in await other.set_aside_rows()] == [seqs[1]]
    finally:
        await other.close()
    assert await store.pending_outbox(10) == []

    # A long reason is kept bounded.
    await commit(store, NGO, obj(version="2026-02-01T00:00:00.000Z"))
    [later] = await store.pending_outbox(10)
    await store.mark_published([], {}, set_aside={later.seq: "y" * 5000})
    assert [r.seq for r in await store.set_aside_rows(limit=1)] == [seqs[1]]
    [_, row] = await store.set_aside_rows()
    assert row.reason == "y" * SET_ASIDE_REASON_CHARS + "..."
    assert await store.set_aside_rows(limit=0) == []


async def test_a_new_version_widens_the_held_audience(store: Store) -> None:
    amber = audience(Tlp.AMBER, communities=[GULF.name], excluded=[PartnerKind.TECH])
    red = audience(Tlp.RED, recipients=[PLATFORM.partner_id])
    widened = audience(Tlp.AMBER, communities=[GULF.name], recipients=[PLATFORM.partner_id])

    # Across bundles: the second version keeps what the first reached.
    first = await commit(store, NGO, (obj(), amber))
    assert without_receipts(first) == [Committed(CommitOutcome.INSERTED, amber)]
    second = await commit(store, NGO, (obj(version="2026-02-01T00:00:00.000Z"), red))
    assert without_receipts(second) == [Committed(CommitOutcome.INSERTED, widened)]

    # Inside one bundle: each version widens the one before it.
    v1, v2, v3 = (obj(OTHER_INDICATOR, f"2026-0{m}-01T00:00:00.000Z") for m in (1, 2, 3))
    green = audience(Tlp.GREEN)
    committed = await commit(store, NGO, (v1, red), (v2, amber), (v1, green), (v3, green))
    assert without_receipts(committed) == [
        Committed(CommitOutcome.INSERTED, red),
        Committed(CommitOutcome.INSERTED, widened),
        Committed(CommitOutcome.DUPLICATE),  # a duplicate widens nothing
        Committed(
            CommitOutcome.INSERTED,
            audience(Tlp.GREEN, communities=[GULF.name], recipients=[PLATFORM.partner_id]),
        ),
    ]
    stored = [p for p in await store.pending_outbox(10) if p.obj.object_id == OTHER_INDICATOR]
    assert [p.audience for p in stored] == [c.audience for c in committed if c.audience]


async def test_widen_starts_from_the_latest_accepted_version(store: Store) -> None:
    seen: list[tuple[Audience, Audience]] = []

    def widen(held: Audience, asked: Audience) -> Audience:
        seen.append((held, asked))
        return policy.widen(held, asked)

    later, earlier = obj(version="2026-03-01T00:00:00.000Z"), obj(version="2026-02-01T00:00:00Z")
    a, b = audience(Tlp.RED, recipients=["x"]), audience(Tlp.RED, recipients=["y"])
    await store.commit_objects(NGO, [(later, a)], 1.0, widen)
    assert seen == []  # the first version gets what it asked for
    # An older version accepted later still starts from the latest accepted audience.
    [done] = await store.commit_objects(NGO, [(earlier, b)], 2.0, widen)
    assert seen == [(a, b)]
    assert done.audience == audience(Tlp.RED, recipients=["x", "y"])
    # ...and the latest version is the one with the highest timestamp, under the
    # audience it was stored and delivered with.
    [latest] = await store.object_copies(INDICATOR)
    assert latest.obj == later and latest.audience == a


async def test_object_copies_by_version_or_latest(store: Store) -> None:
    v1, v2 = obj(), obj(version="2026-02-01T00:00:00.5Z")
    await commit(store, NGO, v2, v1)
    [latest] = await store.object_copies(INDICATOR)
    assert latest.obj == v2 and latest.submitter == NGO.partner_id
    assert latest.audience == audience(Tlp.GREEN)
    # Versions compare canonically: the same instant in another precision.
    [found] = await store.object_copies(INDICATOR, "2026-01-01T00:00:00Z")
    assert found.obj == v1
    [found] = await store.object_copies(INDICATOR, "2026-02-01T00:00:00.500000Z")
    assert found.obj == v2
    assert await store.object_copies(INDICATOR, "2026-03-01T00:00:00.000Z") == []
    assert await store.object_copies(OTHER_INDICATOR) == []
    # An id that holds a NUL character is held by nobody, on either store.
    assert await store.object_copies(INDICATOR + "\x00") == []


async def test_submitters_of(store: Store) -> None:
    theirs = obj(OTHER_INDICATOR, creator=PLATFORM.identity_id)
    await commit(store, NGO, obj(), obj(version="2026-02-01T00:00:00.000Z"))
    await commit(store, PLATFORM, theirs)
    wanted = [INDICATOR, OTHER_INDICATOR, "indicator--unknown", INDICATOR + "\x00"]
    assert await store.submitters_of(wanted) == {
        INDICATOR: frozenset({NGO.partner_id}),
        OTHER_INDICATOR: frozenset({PLATFORM.partner_id}),
    }
    assert await store.submitters_of([]) == {}


# -- observables: one copy per submitting partner ----------------------------------------


def email(submitter: Partner, version: str = "2026-01-01T00:00:00.000Z") -> ValidObject:
    """The same observable as any partner submits it: its creator is the submitter."""
    return replace(obj(EMAIL, version, submitter.identity_id), object_type="email-addr", labels=())


async def test_each_partner_holds_its_own_copy_of_an_observable(store: Store) -> None:
    """Defect 10: whoever submits a phone number first neither blocks the others nor
    tells them (DUPLICATE, NOT_CREATOR) that someone holds it."""
    red = audience(Tlp.RED, PLATFORM, recipients=[NGO.partner_id])
    green = audience(Tlp.GREEN)
    first = await commit(store, PLATFORM, (email(PLATFORM), red))
    assert without_receipts(first) == [Committed(CommitOutcome.INSERTED, red)]
    # Another partner's copy: stored, with its own audience (nothing widened from the
    # other copy), and answered exactly as if nobody held it.
    second = await commit(store, NGO, (email(NGO), green))
    assert without_receipts(second) == [Committed(CommitOutcome.INSERTED, green)]
    # Each partner's own copy behaves as an object does: the same version again is a
    # duplicate, a new version widens that copy's audience only.
    assert outcomes(await commit(store, NGO, email(NGO))) == [CommitOutcome.DUPLICATE]
    newer = email(NGO, "2026-02-01T00:00:00.000Z")
    amber = audience(Tlp.AMBER, communities=[GULF.name])
    [done] = await commit(store, NGO, (newer, amber))
    assert done.audience == audience(Tlp.GREEN, communities=[GULF.name])

    assert await store.submitters_of([EMAIL]) == {
        EMAIL: frozenset({NGO.partner_id, PLATFORM.partner_id})
    }
    # Every copy at its latest version, in the order the copies were accepted.
    copies = await store.object_copies(EMAIL)
    assert [(c.submitter, c.obj.version, c.audience) for c in copies] == [
        (PLATFORM.partner_id, "2026-01-01T00:00:00.000Z", red),
        (NGO.partner_id, "2026-02-01T00:00:00.000Z", done.audience),
    ]
    # A version asked for: each copy that holds it.
    copies = await store.object_copies(EMAIL, "2026-01-01T00:00:00Z")
    assert [c.submitter for c in copies] == [PLATFORM.partner_id, NGO.partner_id]
    [only] = await store.object_copies(EMAIL, "2026-02-01T00:00:00Z")
    assert only.submitter == NGO.partner_id
    pending = [(p.submitter, p.obj.object_id) for p in await store.pending_outbox(10)]
    assert pending == [
        (PLATFORM.partner_id, EMAIL),
        (NGO.partner_id, EMAIL),
        (NGO.partner_id, EMAIL),
    ]


async def test_objects_that_are_not_observables_keep_one_creator(store: Store) -> None:
    await commit(store, NGO, obj())
    # An indicator (an SDO) of the same id from another partner is still refused.
    hijack = obj(version="2026-02-01T00:00:00.000Z", creator=PLATFORM.identity_id)
    assert outcomes(await commit(store, PLATFORM, hijack)) == [CommitOutcome.NOT_CREATOR]
    assert [c.submitter for c in await store.object_copies(INDICATOR)] == [NGO.partner_id]


async def test_one_bundle_with_an_observable_and_other_copies(store: Store) -> None:
    """Copies of one observable in one bundle: each submitter's, in its own turn."""
    await commit(store, PLATFORM, email(PLATFORM))
    results = await commit(store, NGO, email(NGO), email(NGO), obj())
    assert outcomes(results) == [
        CommitOutcome.INSERTED,
        CommitOutcome.DUPLICATE,
        CommitOutcome.INSERTED,
    ]


# -- text a database cannot store ---------------------------------------------------------


async def test_a_nul_character_is_refused_alike_by_both_stores(store: Store) -> None:
    """Validation refuses NUL characters in objects; a bundle that holds one all the
    same is refused whole, naming where, on SQLite as on PostgreSQL (which cannot
    store it), never an internal error."""
    size = await store.audit_size()
    labelled = replace(obj(OTHER_INDICATOR), labels=("ok", "bad\x00label"), index=3)
    with pytest.raises(InvalidArgument) as refused:
        await commit(store, NGO, obj(), labelled)
    assert refused.value.message == (
        f"object {OTHER_INDICATOR} (index 3): its labels[1] holds a NUL character (U+0000),"
        " which the database cannot store: remove it; nothing of this call was stored"
    )
    named = (obj(), audience(Tlp.RED, recipients=["ngo-\x00"]))
    with pytest.raises(
        InvalidArgument, match=r"\(index 0\): its audience \(a community or recipient\) holds a NUL"
    ):
        await commit(store, NGO, named)
    assert await store.pending_outbox(10) == []
    assert await store.audit_size() == size


# -- partners ---------------------------------------------------------------------------


async def test_partners_round_trip(store: Store) -> None:
    assert await store.get_partner(NGO.partner_id) == NGO
    assert await store.get_partner(PLATFORM.partner_id) == PLATFORM
    assert await store.get_partner("nobody") is None
    assert await store.list_partners() == [NGO, PLATFORM]  # oldest first

    changed = Partner(
        NGO.partner_id,
        "Harbor Light Foundation",
        NGO.identity_id,
        kind=PartnerKind.INTERGOVERNMENTAL,
        sectors=("shelter", "hotline"),
        roles=frozenset({Role.ADMIN}),
        default_tlp=Tlp.RED,
        disabled=True,
    )
    await store.update_partner(changed)
    # Memberships are not part of an update: they change by joining and leaving.
    assert await store.get_partner(NGO.partner_id) == replace(changed, communities=NGO.communities)
    with pytest.raises(NotFound, match="unknown partner nobody"):
        await store.update_partner(Partner("nobody", "Nobody", "identity--x"))


async def test_adding_a_partner_checks_what_it_names(store: Store) -> None:
    token, _ = new_token_credential("other")
    with pytest.raises(AlreadyExists, match="STIX identity already registered"):
        await store.add_partner(Partner("other", "Other", NGO.identity_id), token)
    with pytest.raises(AlreadyExists, match="partner id already registered"):
        await store.add_partner(
            Partner(NGO.partner_id, "Other", "identity--y"),
            replace(token, partner_id=NGO.partner_id),
        )
    with pytest.raises(InvalidArgument, match="must name the new partner"):
        await store.add_partner(Partner("other", "Other", "identity--y"), NGO_TOKEN)
    version = await store.registry_version()
    lost = Partner("other", "Other", "identity--z", communities=frozenset({"gulf-ngos", "nope"}))
    with pytest.raises(NotFound, match="unknown community nope"):
        await store.add_partner(lost, token)
    # Nothing of a refused partner was written.
    assert await store.get_partner("other") is None
    assert await store.credential(CredentialKind.TOKEN, token.digest) is None
    assert await store.registry_version() == version
    # Its first credential's digest must be free too.
    with pytest.raises(AlreadyExists, match="already bound to partner ngo-1"):
        await store.add_partner(
            Partner("other", "Other", "identity--z"),
            Credential("tok_0", "other", CredentialKind.TOKEN, NGO_TOKEN.digest, 1.0),
        )


# -- communities --------------------------------------------------------------------------


async def test_communities_and_memberships(store: Store) -> None:
    with pytest.raises(AlreadyExists, match="community gulf-ngos already exists"):
        await store.add_community(Community(GULF.name, "again"))
    await store.add_community(Community("alpha", "first by name", (PLATFORM.partner_id,)))
    assert await store.list_communities() == [
        Community("alpha", "first by name", (PLATFORM.partner_id,)),
        Community(GULF.name, GULF.description, (NGO.partner_id,)),
    ]

    await store.join_community(GULF.name, PLATFORM.partner_id)
    await store.join_community(GULF.name, PLATFORM.partner_id)  # twice changes nothing
    [_, gulf] = await store.list_communities()
    assert gulf.members == (NGO.partner_id, PLATFORM.partner_id)
    plat = await store.get_partner(PLATFORM.partner_id)
    assert plat is not None and plat.communities == {"alpha", GULF.name}

    await store.leave_community(GULF.name, NGO.partner_id)
    ngo = await store.get_partner(NGO.partner_id)
    assert ngo is not None and ngo.communities == frozenset()
    with pytest.raises(NotFound, match="partner ngo-1 is not a member of community gulf-ngos"):
        await store.leave_community(GULF.name, NGO.partner_id)
    for act in (store.join_community, store.leave_community):
        with pytest.raises(NotFound, match="unknown community nope"):
            await act("nope", NGO.partner_id)
        with pytest.raises(NotFound, match="unknown partner nobody"):
            await act(GULF.name, "nobody")
    with pytest.raises(NotFound, match="unknown partner nobody"):
        await store.add_community(Community("beta", "", ("nobody",)))
    assert [c.name for c in await store.list_communities()] == ["alpha", GULF.name]


async def test_communities_are_listed_by_name_byte_by_byte(store: Store) -> None:
    """Whatever the database's locale: capitals before lower case, "-" before letters."""
    for name in ("alpha", "Beta", "gulf", "al-pha"):
        await store.add_community(Community(name))
    assert [c.name for c in await store.list_communities()] == [
        "Beta",
        "al-pha",
        "alpha",
        "gulf",
        GULF.name,
    ]


# -- credentials ----------------------------------------------------------------------------


async def test_credentials_look_up_whatever_their_state(store: Store) -> None:
    found = await store.credential(CredentialKind.TOKEN, NGO_TOKEN.digest)
    assert found == (NGO_TOKEN, NGO)
    assert await store.credential(CredentialKind.TOKEN, b"x" * 32) is None
    # A digest is known under its kind only.
    assert await store.credential(CredentialKind.CERTIFICATE, NGO_TOKEN.digest) is None

    cert = certificate(NGO.partner_id)
    await store.add_credential(cert)
    assert await store.credential(CredentialKind.CERTIFICATE, cert.digest) == (cert, NGO)
    assert await store.list_credentials(NGO.partner_id) == [NGO_TOKEN, cert]
    assert await store.list_credentials("nobody") == []

    revoked = await store.revoke_credential(NGO.partner_id, NGO_TOKEN.credential_id, 50.0)
    assert revoked.revoked_at == 50.0 and revoked.credential_id == NGO_TOKEN.credential_id
    # Revoking again keeps the first time.
    again = await store.revoke_credential(NGO.partner_id, NGO_TOKEN.credential_id, 60.0)
    assert again == revoked
    found = await store.credential(CredentialKind.TOKEN, NGO_TOKEN.digest)
    assert found is not None and found[0] == revoked
    assert found[0].problem(70.0) == f"token {NGO_TOKEN.credential_id} was revoked"
    assert await store.list_credentials(NGO.partner_id) == [revoked, cert]


async def test_credential_errors(store: Store) -> None:
    with pytest.raises(NotFound, match="unknown partner nobody"):
        await store.add_credential(certificate("nobody"))
    cert = certificate(NGO.partner_id)
    await store.add_credential(cert)
    # One certificate, one partner.
    with pytest.raises(AlreadyExists, match="certificate is already bound to partner ngo-1"):
        await store.add_credential(
            Credential("crt_other", PLATFORM.partner_id, cert.kind, cert.digest, 30.0)
        )
    with pytest.raises(AlreadyExists, match=r"credential id crt_\w+ is already taken"):
        await store.add_credential(
            Credential(cert.credential_id, PLATFORM.partner_id, cert.kind, b"d" * 32, 30.0)
        )
    # Another partner's credential is not one of this partner's.
    with pytest.raises(NotFound, match=f"partner plat-1 has no credential {cert.credential_id}"):
        await store.revoke_credential(PLATFORM.partner_id, cert.credential_id, 1.0)
    with pytest.raises(NotFound, match="unknown partner nobody"):
        await store.revoke_credential("nobody", cert.credential_id, 1.0)
    found = await store.credential(cert.kind, cert.digest)
    assert found is not None and found[0].revoked_at is None


async def test_registry_version_moves_with_every_registry_change(store: Store) -> None:
    versions = [await store.registry_version()]

    async def moved() -> bool:
        versions.append(await store.registry_version())
        return versions[-1] != versions[-2]

    token, _ = new_token_credential("gov-1")
    await store.add_partner(Partner("gov-1", "Labour Inspectorate", "identity--g"), token)
    assert await moved()
    await store.update_partner(Partner("gov-1", "Inspectorate", "identity--g", disabled=True))
    assert await moved()
    await store.add_community(Community("baltic"))
    assert await moved()
    await store.join_community("baltic", "gov-1")
    assert await moved()
    await store.join_community("baltic", "gov-1")
    assert not await moved()  # already a member: no change
    await store.leave_community("baltic", "gov-1")
    assert await moved()
    cert = certificate("gov-1")
    await store.add_credential(cert)
    assert await moved()
    await store.revoke_credential("gov-1", cert.credential_id, 5.0)
    assert await moved()
    await store.revoke_credential("gov-1", cert.credential_id, 6.0)
    assert not await moved()  # already revoked: no change

    # Objects are not the registry.
    await commit(store, NGO, obj())
    await store.mark_published([1], {("green", 0): 1})
    assert not await moved()
    # A failed change moves nothing.
    with pytest.raises(NotFound):
        await store.join_community("nope", "gov-1")
    assert not await moved()


async def test_registry_changes_are_seen_by_another_store(
    store: Store, make_store: StoreFactory
) -> None:
    """The CLI changes the registry on the same file while the server runs."""
    other = make_store()
    await other.open()
    try:
        before = await store.registry_version()
        await other.revoke_credential(NGO.partner_id, NGO_TOKEN.credential_id, 9.0)
        assert await store.registry_version() == before + 1
        found = await store.credential(CredentialKind.TOKEN, NGO_TOKEN.digest)
        assert found is not None and found[0].revoked_at == 9.0
    finally:
        await other.close()


# -- operations -----------------------------------------------------------------------------


async def test_health_leases_and_migrations_of_an_open_store(
    store: Store, make_store: StoreFactory
) -> None:
    await store.ping()
    # One process alone holds every lease, and keeps it.
    assert await store.hold_lease("relay")
    assert await store.hold_lease("relay")
    # Migrating a current store (`exchange db migrate` while it runs) changes nothing.
    migrating = make_store()
    found, now = await migrating.migrate()
    await migrating.close()
    assert found == now


async def test_the_audit_key_recorded_first_stays(store: Store, make_store: StoreFactory) -> None:
    assert await store.audit_public_key(b"first key") == b"first key"
    other = make_store()
    await other.open()
    try:
        assert await other.audit_public_key(b"second key") == b"first key"
    finally:
        await other.close()
    assert await store.audit_public_key(b"third key") == b"first key"


async def test_rows_another_process_published_are_no_error(
    store: Store, make_store: StoreFactory
) -> None:
    await commit(store, NGO, obj(), obj(OTHER_INDICATOR))
    seqs = [p.seq for p in await store.pending_outbox(10)]
    other = make_store()
    await other.open()
    try:
        await other.mark_published(seqs, {("green", 0): 2, ("green", 1): 7})
        # The same rows again (a relay that lost its lease mid-batch), further behind.
        await store.mark_published(seqs, {("green", 0): 1, ("clear", 0): 4})
    finally:
        await other.close()
    assert await store.pending_outbox(10) == []
    assert await store.relay_positions(["green", "clear", "amber"]) == {
        ("green", 0): 2,
        ("green", 1): 7,
        ("clear", 0): 4,
    }
    assert await store.relay_positions([]) == {}


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture(params=STORES)
def on_small_disk(request: pytest.FixtureRequest) -> Iterator[tuple[StoreOn, SmallDisk]]:
    """Builds stores whose files are all on a small tmpfs (the SQLite file, or every
    file of a PostgreSQL database), and that disk."""
    if request.param == "sqlite":
        with small_disk(32 * MIB) as disk:
            yield (lambda m: SqliteStore(disk.path / "exchange.sqlite3", metrics=m)), disk
        return
    from exchange.store.postgres import PostgresStore  # noqa: PLC0415 (only when needed)

    server: PostgresServer = request.getfixturevalue("postgres")
    with database_on_small_disk(server, 48 * MIB) as (url, disk):
        yield (lambda m: PostgresStore(url, pool_size=4, metrics=m)), disk


StoreOn = Callable[[Metrics], Store]


def large(n: int, attempt: int) -> ValidObject:
    """An object of 64 KB that does not compress (it must take room on disk)."""
    oid = f"indicator--00000000-0000-4000-8000-{attempt:06d}{n:06d}"
    return replace(obj(oid), body=os.urandom(64 * 1024))


async def test_a_full_disk_refuses_writes_until_there_is_room(
    on_small_disk: tuple[StoreOn, SmallDisk], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 14: a write the disk has no room for answers StoreFull (UNAVAILABLE)
    and stores nothing of the call; ping fails (health: NOT_SERVING) until there is
    room again; the operator is told once when it starts and once when it ends; the
    same store then writes again, with everything acknowledged before still there."""
    make, disk = on_small_disk
    metrics = Metrics(process=False)
    store = make(metrics)
    caplog.set_level(logging.INFO, logger="exchange.store")
    await store.open()
    try:
        await store.add_community(GULF)
        await store.add_partner(NGO, NGO_TOKEN)
        await commit(store, NGO, obj())
        acknowledged = [INDICATOR]
        disk.fill()

        # Writes go on until one finds no room (SQLite can still reuse a little of its
        # files): each bundle is acknowledged whole, or refused with nothing stored.
        refused: StoreFull | None = None
        for attempt in range(40):
            bundle = [large(n, attempt) for n in range(16)]
            size = await store.audit_size()
            try:
                await commit(store, NGO, *bundle)
            except StoreFull as exc:
                refused = exc
                break
            acknowledged += [o.object_id for o in bundle]
        assert refused is not None, "the disk never filled up"
        assert isinstance(refused, Unavailable)
        assert refused.message == (
            "the exchange cannot store anything right now: its storage is full;"
            " nothing of this call was stored; retry later"
        )
        for o in bundle:
            assert await store.object_copies(o.object_id) == []
        assert await store.audit_size() == size
        assert metrics.registry.get_sample_value("exchange_store_full") == 1

        # While the disk is full: ping fails, however often it is asked.
        for _ in range(3):
            with pytest.raises(StoreFull, match="is full"):
                await store.ping()
        with pytest.raises(StoreFull):
            await commit(store, NGO, *bundle)
        told = [r for r in caplog.records if r.name.startswith("exchange.store")]
        assert [r.levelno for r in told] == [logging.WARNING], [r.message for r in told]
        assert " is full (" in told[0].message and "NOT_SERVING" in told[0].message

        disk.free()
        await store.ping()  # room again: the probe write succeeds
        await store.ping()
        assert metrics.registry.get_sample_value("exchange_store_full") == 0
        told = [r for r in caplog.records if r.name.startswith("exchange.store")]
        assert len(told) == 2 and "has room again" in told[1].message, [r.message for r in told]

        # The same store writes again, and lost nothing acknowledged before.
        assert outcomes(await commit(store, NGO, *bundle)) == [CommitOutcome.INSERTED] * 16
        stored = {p.obj.object_id for p in await store.pending_outbox(1000)}
        assert stored == {*acknowledged, *(o.object_id for o in bundle)}
    finally:
        await store.close()


# -- published objects (TAXII pages) -----------------------------------------------------


async def test_published_objects_page_by_sequence_with_filters(store: Store) -> None:
    first, second = obj(), obj(version="2026-02-01T00:00:00.000Z")
    other = obj(OTHER_INDICATOR)
    await commit(store, NGO, first, other)
    await commit(store, NGO, second)
    # Nothing is listed before the relay published it.
    assert await store.published_objects(PublishedQuery(after_seq=0, limit=10)) == []
    pending = await store.pending_outbox(10)
    await store.mark_published([p.seq for p in pending[:2]], {})
    listed = await store.published_objects(PublishedQuery(0, 10, versions=("all",)))
    assert [(s.obj.object_id, s.obj.version) for s in listed] == [
        (INDICATOR, first.version),
        (OTHER_INDICATOR, other.version),
    ]
    await store.mark_published([pending[2].seq], {})
    everything = await store.published_objects(PublishedQuery(0, 10, versions=("all",)))
    seqs = [s.seq for s in everything]
    assert seqs == sorted(seqs) and len(seqs) == 3
    # "last" (the default) and "first" of each copy; pages after a sequence; filters.
    latest = await store.published_objects(PublishedQuery(0, 10))
    assert [(s.obj.object_id, s.obj.version) for s in latest] == [
        (OTHER_INDICATOR, other.version),
        (INDICATOR, second.version),
    ]
    firsts = await store.published_objects(PublishedQuery(0, 10, versions=("first",)))
    assert {s.obj.version for s in firsts} == {first.version, other.version}
    after = await store.published_objects(PublishedQuery(seqs[0], 1, versions=("all",)))
    assert [s.seq for s in after] == [seqs[1]]
    by_id = PublishedQuery(0, 10, object_ids=(INDICATOR,), versions=(second.version,))
    assert [s.obj.version for s in await store.published_objects(by_id)] == [second.version]
    by_type = PublishedQuery(0, 10, types=("malware",), versions=("all",))
    assert await store.published_objects(by_type) == []
    later = PublishedQuery(0, 10, versions=("all",), accepted_from=2.0)
    assert await store.published_objects(later) == []
