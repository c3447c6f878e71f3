"""Fixtures for the integration tests: both buses.

``bus`` runs each test twice, on the embedded LocalBus and on KafkaBus against
Tansu (the ``tansu`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from exchange.bus import Bus
from exchange.bus.kafka import KafkaBus
from exchange.bus.local import LocalBus
from exchange.config import KafkaSettings

BusFactory = Callable[[], Bus]


def kafka_settings(bootstrap: str) -> KafkaSettings:
    # Tansu cannot run the idempotent producer (InitProducerId fails).
    return KafkaSettings(bootstrap=bootstrap, enable_idempotence=False)


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def make_bus(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    """Builds (unstarted) buses over the same storage: the same SQLite file, or the
    same broker and topic prefix. Tests that need two instances call it twice."""
    if request.param == "local":
        path = tmp_path / "bus.sqlite3"
        return lambda: LocalBus(path)
    bootstrap: str = request.getfixturevalue("tansu")
    # A fresh prefix per test: Tansu keeps every topic for the whole session.
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return lambda: KafkaBus(kafka_settings(bootstrap), prefix, client_id="exchange-tests")


@pytest.fixture
async def bus(make_bus: BusFactory) -> AsyncIterator[Bus]:
    """A started bus, closed after the test."""
    instance = make_bus()
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()
