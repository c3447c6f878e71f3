"""Retention on both stores (a real SQLite file, a real PostgreSQL database): what is
due and why (``plan``), that ``run`` erases exactly that, batch by batch, and that
erased copies are not planned again. The clock is injected (``now``); objects are
stored with the acceptance times the tests choose."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from exchange_client import ExchangeClient

from exchange import policy
from exchange.auth import new_token_credential
from exchange.config import RetentionSettings
from exchange.model import Audience, Community, EraseReason, Partner, Tlp, ValidObject
from exchange.retention import DAY_S, Due, plan, run, stix_time
from exchange.store import Store
from tests.helpers import ServerThread, bundle, indicator, settings_for, wait_until
from tests.postgres import STORES, StoreFactory, store_factory

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner("plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7")
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
DAY = DAY_S


def oid(n: int, kind: str = "indicator") -> str:
    return f"{kind}--00000000-0000-4000-8000-{n:012d}"


def obj(
    n: int,
    tlp: Tlp,
    *,
    version: str = "2026-01-01T00:00:00.000Z",
    kind: str = "indicator",
    creator: str = NGO.identity_id,
    valid_until: str | None = None,
) -> ValidObject:
    extra = f',"valid_until":"{valid_until}"' if valid_until is not None else ""
    body = f'{{"type":"{kind}","id":"{oid(n, kind)}","modified":"{version}"{extra}}}'.encode()
    return ValidObject(oid(n, kind), kind, version, creator, tlp, body)


async def put(
    store: Store,
    o: ValidObject,
    accepted_at: float,
    *,
    by: Partner = NGO,
    communities: frozenset[str] = frozenset(),
) -> None:
    audience = Audience(o.tlp, by.partner_id, communities=communities)
    [done] = await store.commit_objects(by, [(o, audience)], accepted_at, policy.widen)
    assert done.outcome.value == "inserted", done


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request, tmp_path)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    await s.add_community(Community("hotlines", "hotlines"))
    await s.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
    await s.add_partner(PLATFORM, new_token_credential(PLATFORM.partner_id, now=2.0)[0])
    try:
        yield s
    finally:
        await s.close()


SETTINGS = RetentionSettings(
    max_age_days={"red": 90, "amber+strict": 365},
    communities={"hotlines": 30},
    expire_valid_until=True,
)


def summary(due: list[Due]) -> list[tuple[str, str, str, str]]:
    return [(d.object_id, d.copy_of, d.reason.value, d.rule) for d in due]


def test_stix_times_are_parsed_not_compared_as_text() -> None:
    assert stix_time("2026-01-01T00:00:00Z") == stix_time("2026-01-01T00:00:00.000Z")
    assert stix_time("2026-01-01T00:00:00.5Z") == stix_time("2026-01-01T00:00:00Z") + 0.5  # type: ignore[operator]
    # As text, "...00Z" sorts after "...00.5Z"; as times it is before.
    assert stix_time("2026-01-01T00:00:00Z") < stix_time("2026-01-01T00:00:00.5Z")  # type: ignore[operator]
    assert stix_time("2026-01-01T00:00:00.123456789Z") is not None
    for bad in ("2026-01-01", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z", "x" * 20 + "Z"):
        assert stix_time(bad) is None


@pytest.mark.parametrize("make_store", STORES, indirect=True)
async def test_plan_lists_exactly_the_due_copies_with_their_rule(store: Store) -> None:
    # Red, 91 days old: due (90 days). Red, 89 days: not yet.
    await put(store, obj(1, Tlp.RED), NOW - 91 * DAY)
    await put(store, obj(2, Tlp.RED), NOW - 89 * DAY)
    # Amber+strict, 400 days: due; green, 1000 days: kept for ever (no rule).
    await put(store, obj(3, Tlp.AMBER_STRICT), NOW - 400 * DAY)
    await put(store, obj(4, Tlp.GREEN), NOW - 1000 * DAY)
    # Green shared with hotlines, 31 days: due by the community's 30 days.
    await put(store, obj(5, Tlp.GREEN), NOW - 31 * DAY, communities=frozenset({"hotlines"}))
    # Red shared with hotlines, 40 days: the stricter rule (hotlines: 30) is named.
    await put(store, obj(6, Tlp.RED), NOW - 40 * DAY, communities=frozenset({"hotlines"}))
    # Expired indicators (valid_until passed), with and without a fraction; one whose
    # valid_until is a fraction of a second in the future is not; nor an unexpired one.
    await put(store, obj(7, Tlp.GREEN, valid_until="2026-06-01T00:00:00Z"), NOW - DAY)
    await put(store, obj(8, Tlp.GREEN, valid_until="2027-01-15T07:59:59.999Z"), NOW - DAY)
    await put(store, obj(9, Tlp.GREEN, valid_until="2027-01-15T08:00:00.001Z"), NOW - DAY)
    await put(store, obj(10, Tlp.GREEN, valid_until="2028-01-01T00:00:00Z"), NOW - DAY)
    # A red indicator both old and expired: the earlier deadline wins (accepted on
    # 2026-06-29, due by its TLP on 2026-09-27; its valid_until came before).
    await put(store, obj(11, Tlp.RED, valid_until="2026-07-01T00:00:00Z"), NOW - 200 * DAY)
    # valid_until on something that is not an indicator means nothing here.
    await put(
        store, obj(12, Tlp.GREEN, kind="malware", valid_until="2026-01-01T00:00:00Z"), NOW - DAY
    )

    due = await plan(store, SETTINGS, NOW)
    assert summary(due) == [
        (oid(1), "ngo-1", "retention", "tlp red: 90 days"),
        (oid(3), "ngo-1", "retention", "tlp amber+strict: 365 days"),
        (oid(5), "ngo-1", "retention", "community hotlines: 30 days"),
        (oid(6), "ngo-1", "retention", "community hotlines: 30 days"),
        (oid(7), "ngo-1", "expired", "valid_until 2026-06-01T00:00:00Z"),
        (oid(8), "ngo-1", "expired", "valid_until 2027-01-15T07:59:59.999Z"),
        (oid(11), "ngo-1", "expired", "valid_until 2026-07-01T00:00:00Z"),
    ]
    first = due[0]
    assert first.age_s == pytest.approx(91 * DAY)
    assert first.accepted_at == NOW - 91 * DAY
    assert first.due_at == pytest.approx(NOW - DAY)
    assert first.record()["age_days"] == 91.0
    # Without expiry, the expired ones are kept; a limit takes the first ones.
    no_expiry = RetentionSettings(max_age_days={"red": 90}, expire_valid_until=False)
    assert [d.object_id for d in await plan(store, no_expiry, NOW)] == [oid(1), oid(11)]
    assert summary(await plan(store, SETTINGS, NOW, limit=2)) == summary(due[:2])
    # No rule at all: nothing is due.
    nothing = RetentionSettings(expire_valid_until=False)
    assert await plan(store, nothing, NOW) == []


@pytest.mark.parametrize("make_store", STORES, indirect=True)
async def test_the_age_counts_from_the_latest_version(store: Store) -> None:
    await put(store, obj(1, Tlp.RED), NOW - 100 * DAY)
    await put(store, obj(2, Tlp.RED), NOW - 100 * DAY)
    assert [d.object_id for d in await plan(store, SETTINGS, NOW)] == [oid(1), oid(2)]
    # A new version of 1, ten days ago: not due before 80 days from now.
    await put(store, obj(1, Tlp.RED, version="2026-06-01T00:00:00.000Z"), NOW - 10 * DAY)
    assert [d.object_id for d in await plan(store, SETTINGS, NOW)] == [oid(2)]
    [later] = [d for d in await plan(store, SETTINGS, NOW + 80 * DAY) if d.object_id == oid(1)]
    assert later.age_s == pytest.approx(90 * DAY)
    # The latest version's TLP decides: a new green version of 2 keeps it.
    await put(store, obj(2, Tlp.GREEN, version="2026-06-01T00:00:00.000Z"), NOW - 95 * DAY)
    assert await plan(store, SETTINGS, NOW) == []


@pytest.mark.parametrize("make_store", STORES, indirect=True)
async def test_each_copy_of_an_observable_is_judged_alone(store: Store) -> None:
    address = obj(1, Tlp.RED, kind="email-addr", version="")
    await put(store, address, NOW - 100 * DAY)
    theirs = obj(1, Tlp.RED, kind="email-addr", version="", creator=PLATFORM.identity_id)
    await put(store, theirs, NOW - 10 * DAY, by=PLATFORM)
    due = await plan(store, SETTINGS, NOW)
    assert [(d.object_id, d.copy_of) for d in due] == [(oid(1, "email-addr"), "ngo-1")]


@pytest.mark.parametrize("make_store", STORES, indirect=True)
async def test_run_erases_exactly_the_plan_in_batches(store: Store) -> None:
    for n in range(1, 6):
        await put(store, obj(n, Tlp.RED), NOW - (100 + n) * DAY)
    await put(store, obj(6, Tlp.GREEN, valid_until="2026-01-01T00:00:00Z"), NOW - DAY)
    await put(store, obj(7, Tlp.RED), NOW - DAY)  # not due
    settings = RetentionSettings(max_age_days={"red": 90}, expire_valid_until=True, batch=4)
    planned = await plan(store, settings, NOW)
    assert len(planned) == 6
    told: list[list[str]] = []

    first = await run(
        store, settings, NOW, on_erased=lambda es: told.append([e.object_id for e in es])
    )
    # At most one batch, exactly the plan's first four, each erased with its reason.
    assert first.more
    assert first.erased == first.due == planned[:4]
    assert told == [[d.object_id for d in planned[:4]]]
    for due, erasure in zip(planned[:4], first.erasures, strict=True):
        assert (erasure.object_id, erasure.submitter) == (due.object_id, due.copy_of)
        assert erasure.reason is EraseReason.RETENTION
        assert erasure.erased_by == "operator"
        assert erasure.erased_at == NOW
    # Erased copies are not planned again: the next run goes on with the rest.
    assert summary(await plan(store, settings, NOW)) == summary(planned[4:])
    second = await run(store, settings, NOW)
    assert not second.more
    assert second.erased == planned[4:]
    assert [e.reason for e in second.erasures] == [EraseReason.RETENTION, EraseReason.EXPIRED]
    assert await plan(store, settings, NOW) == []
    third = await run(store, settings, NOW)
    assert third.erased == [] and third.erasures == []
    # What is left is the copy that was not due.
    assert [c.obj.object_id for c in await store.object_copies(oid(7))] == [oid(7)]


@pytest.mark.parametrize("make_store", STORES, indirect=True)
async def test_a_copy_given_a_new_version_after_the_plan_is_skipped(store: Store) -> None:
    await put(store, obj(1, Tlp.RED), NOW - 100 * DAY)
    await put(store, obj(2, Tlp.RED), NOW - 100 * DAY)
    await put(store, obj(3, Tlp.RED), NOW - 100 * DAY)
    planned = await plan(store, SETTINGS, NOW)
    assert [d.object_id for d in planned] == [oid(1), oid(2), oid(3)]
    # Between the plan and its erasures, the submitter publishes a new version of 1,
    # and 3 is erased by someone else.
    await put(store, obj(1, Tlp.RED, version="2026-06-01T00:00:00.000Z"), NOW - DAY)
    await store.erase_object(
        oid(3), by=NGO.partner_id, reason=EraseReason.INACCURATE, at=NOW, copy_of=NGO.partner_id
    )
    done = await run(store, SETTINGS, NOW, planned=planned)
    assert done.due == planned
    assert [d.object_id for d in done.erased] == [oid(2)]
    assert [e.object_id for e in done.erasures] == [oid(2)]
    # 1 is kept, its new version the latest; 3 has its own erasure only.
    assert [c.obj.version for c in await store.object_copies(oid(1))] == [
        "2026-06-01T00:00:00.000Z"
    ]
    assert [e.reason for e in await store.erasures_of(oid(3))] == [EraseReason.INACCURATE]


# -- the schedule in a served exchange ----------------------------------------------------


def test_a_served_exchange_erases_what_is_due_on_its_schedule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exchange.retention")
    settings = settings_for(
        tmp_path / "data",
        retention={
            "max_age_days": {"red": 90},
            "expire_valid_until": True,
            "interval_s": 0.05,
            "batch": 1,
        },
    )
    server = ServerThread(settings).start()
    try:
        assert server.server is not None
        exchange = server.server
        ngo = server.add_partner("harbor-light")
        # An indicator whose valid_until has passed (due at once), and one that is fine.
        expired = indicator(ngo.identity, n=1, valid_until="2026-01-02T00:00:00.000Z")
        fresh = indicator(ngo.identity, n=2, tlp=Tlp.RED)
        with ExchangeClient(server.target, token=ngo.token) as c:
            c.submit(bundle([expired, fresh]))
        # A red one accepted 100 days ago (stored as the CLI would, with that time).
        old = obj(3, Tlp.RED, creator=ngo.identity)
        server.run(put(exchange.store, old, time.time() - 100 * DAY, by=server.partner(ngo)))

        def erased() -> float:
            counter = exchange.metrics.retention_erased
            return float(sum(counter.labels(r)._value.get() for r in ("retention", "expired")))

        # batch = 1: two runs at least, one copy each.
        wait_until(lambda: erased() == 2, 30.0, "retention to erase the two due copies")
        assert exchange.metrics.retention_erased.labels("expired")._value.get() == 1
        assert exchange.retention.runs >= 2
        left = server.run(plan(exchange.store, settings.retention, time.time()))
        assert left == []
        erasures = server.run(exchange.store.erasures_of(expired["id"]))
        assert [(e.reason, e.erased_by) for e in erasures] == [(EraseReason.EXPIRED, "operator")]
        assert server.run(exchange.store.erasures_of(fresh["id"])) == []
        # One line per run, with counts: never an id.
        lines = [r.getMessage() for r in caplog.records if r.name == "exchange.retention"]
        assert "retention: erased 1 copy (0 past their maximum age, 1 expired)" in "\n".join(lines)
        assert all(line.startswith("retention: erased ") for line in lines)
        assert not any(o in line for line in lines for o in (expired["id"], old.object_id))
    finally:
        server.stop()
