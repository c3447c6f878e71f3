"""A submission whose caller goes away keeps its place in the partner's limits until
the work it started has ended: cancelling and resubmitting cannot pile up bundles
being decoded beyond what the limits allow."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from exchange.auth import new_token_credential
from exchange.config import Limits
from exchange.errors import ResourceExhausted
from exchange.ingest import Ingest
from exchange.model import ObjectOutcome, Partner, PartnerKind
from exchange.store.sqlite import SqliteStore
from exchange.validation import Validator
from tests.helpers import bundle, indicator

PARTNER = Partner(
    "ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44", kind=PartnerKind.NGO
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    instance = SqliteStore(tmp_path / "exchange.sqlite3")
    await instance.open()
    await instance.add_partner(PARTNER, new_token_credential(PARTNER.partner_id, now=1.0)[0])
    try:
        yield instance
    finally:
        await instance.close()


def _raw(n: int, description: str = "") -> bytes:
    obj = indicator(PARTNER.identity_id, n=n)
    if description:
        obj["description"] = description
    return orjson.dumps(bundle([obj]))


async def test_a_cancelled_submission_holds_its_place_until_its_decoding_ends(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large enough to be decoded off the event loop.
    large = "x" * 90_000
    first = _raw(1, large * 4)
    # Room in bytes for one of these bundles in progress, not two.
    limits = Limits(max_submission_bytes_per_partner=len(first) + 10)
    validator = Validator(workers=1)
    ingest = Ingest(store, validator, limits)
    decoding, go_on = threading.Event(), threading.Event()
    decode = ingest._decode

    def held_decode(raw: bytes) -> object:
        # Stands for a large bundle: decoding goes on after its caller went away.
        decoding.set()
        go_on.wait(60)
        return decode(raw)

    monkeypatch.setattr(ingest, "_decode", held_decode)
    try:
        gone = asyncio.create_task(ingest.submit(PARTNER, first))
        assert await asyncio.to_thread(decoding.wait, 60)
        gone.cancel()
        # The cancellation waits for the decoding, its place kept meanwhile.
        done, _ = await asyncio.wait([gone], timeout=0.2)
        assert not done
        with pytest.raises(ResourceExhausted, match="max_submission_bytes_per_partner"):
            await ingest.submit(PARTNER, _raw(2, large))
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        # Ended: the place is free again.
        (result,) = await ingest.submit(PARTNER, _raw(3))
        assert result.outcome is ObjectOutcome.ACCEPTED
    finally:
        go_on.set()
        ingest.close()
        validator.close()
