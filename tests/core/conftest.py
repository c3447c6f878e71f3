"""The core (Ingest, Relay, Subscriptions) on its own: a temporary SQLite store, the
embedded LocalBus, and no server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from exchange import policy
from exchange.bus.local import LocalBus
from exchange.config import Limits
from exchange.ingest import Ingest
from exchange.store.sqlite import SqliteStore
from exchange.validation import Validator
from tests.core.edges import CREDENTIALS, NGO, PLATFORM, FlakyBus


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    instance = SqliteStore(tmp_path / "exchange.sqlite3")
    await instance.open()
    for partner in (NGO, PLATFORM):
        await instance.add_partner(partner, CREDENTIALS[partner.partner_id][0])
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[FlakyBus]:
    """The LocalBus, behind a wrapper that fails when a test says so."""
    instance = FlakyBus(LocalBus(tmp_path / "bus.sqlite3", poll_interval_s=0.02))
    await instance.start()
    await instance.ensure_topics(policy.SHARED_TOPICS)
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture
def ingest(store: SqliteStore) -> Iterator[Ingest]:
    # One validation thread: the pipeline's order does not depend on worker processes.
    instance = Ingest(store, Validator(1), Limits())
    try:
        yield instance
    finally:
        instance.close()
