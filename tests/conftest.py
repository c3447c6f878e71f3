"""Fixtures shared by every test folder, and the session's environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.environment import drop_exchange_settings, header
from tests.kafka_broker import TansuBroker
from tests.postgres import PostgresServer

_dropped: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Before any test or fixture runs, so that servers started as subprocesses do
    # not inherit them either (tests/environment.py says why).
    _dropped.extend(drop_exchange_settings(os.environ))


def pytest_report_header(config: pytest.Config) -> str:
    return header(_dropped)


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this session (tests/postgres.py), started only if a
    PostgreSQL test runs, and stopped by its pid (its directory deleted) at the end."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        if postgres.running:
            postgres.drop_database(url)
