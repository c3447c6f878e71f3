"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_broker import TansuBroker


@pytest.fixture(scope="session")
def tansu() -> Iterator[str]:
    """The bootstrap address ("127.0.0.1:PORT") of a Tansu broker for this session,
    started only if a Kafka test runs, and stopped by its pid at the end."""
    # kcat_compatible: the kcat checks read this broker too (see tests/kafka_broker.py).
    broker = TansuBroker(kcat_compatible=True)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
