"""ErasedCopies on both stores: a process learns of an erasure made by another one (the
operator's CLI on the data directory, a replica) within about a second, and holds back
the erased versions of that copy only: a newer version, and another partner's copy of
the same observable, are not held back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange import policy
from exchange._erased import ErasedCopies
from exchange.auth import new_token_credential
from exchange.model import Audience, EraseReason, Partner, StoredObject, Tlp, ValidObject
from exchange.store import Store
from tests.postgres import STORES, StoreFactory, store_factory

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
PLATFORM = Partner("plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7")
INDICATOR = "indicator--6bd06048-f8e8-5524-a440-95e258a3588a"
PHONE = "email-addr--5c6c0e3a-8a0c-5f8b-9d5c-4b2f7d1c2e10"
V1, V2, V3 = "2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z", "2026-01-03T00:00:00.000Z"


def obj(oid: str, otype: str, version: str, who: Partner) -> ValidObject:
    return ValidObject(oid, otype, version, who.identity_id, Tlp.GREEN, b'{"x":1}')


def stored(o: ValidObject, who: Partner) -> StoredObject:
    return StoredObject(1, who.partner_id, 1.0, o, Audience(Tlp.GREEN, who.partner_id))


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    return store_factory(request, tmp_path)


@pytest.fixture
async def stores(make_store: StoreFactory) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores over the same storage: this process's, and another one's."""
    mine, other = make_store(), make_store()
    await mine.open()
    await other.open()
    try:
        for partner in (NGO, PLATFORM):
            await mine.add_partner(partner, new_token_credential(partner.partner_id, now=1.0)[0])
        yield mine, other
    finally:
        await other.close()
        await mine.close()


async def test_an_erasure_by_another_process_is_held_back_within_a_second(
    stores: tuple[Store, Store],
) -> None:
    mine, other = stores
    indicators = [obj(INDICATOR, "indicator", v, NGO) for v in (V1, V2)]
    for who, objects in ((NGO, [*indicators, obj(PHONE, "email-addr", "", NGO)]),):
        pairs = [(o, Audience(o.tlp, who.partner_id)) for o in objects]
        await mine.commit_objects(who, pairs, 1.0, policy.widen)
    phone_of_platform = obj(PHONE, "email-addr", "", PLATFORM)
    await mine.commit_objects(
        PLATFORM, [(phone_of_platform, Audience(Tlp.GREEN, PLATFORM.partner_id))], 1.0, policy.widen
    )
    erased = ErasedCopies(mine, poll_s=0.05)
    await erased.start()
    try:
        assert not erased.hides(stored(indicators[0], NGO))
        for oid in (INDICATOR, PHONE):
            await other.erase_object(
                oid, by="operator", reason=EraseReason.COURT_ORDER, at=5.0, copy_of=NGO.partner_id
            )
        async with asyncio.timeout(5):
            while len(erased) < 2:  # noqa: ASYNC110 (what is tested is its own poll: no event)
                await asyncio.sleep(0.01)
        assert erased.hides(stored(indicators[0], NGO))
        assert erased.hides(stored(indicators[1], NGO))
        assert erased.hides(stored(obj(PHONE, "email-addr", "", NGO), NGO))
        # A newer version by its creator, and another partner's copy: not held back.
        assert not erased.hides(stored(obj(INDICATOR, "indicator", V3, NGO), NGO))
        assert not erased.hides(stored(phone_of_platform, PLATFORM))
    finally:
        await erased.close()
