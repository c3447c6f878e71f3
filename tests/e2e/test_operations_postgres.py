"""An operator's view of a server on PostgreSQL: the metrics endpoint's counters
move with the traffic, and gRPC health (and /readyz) says NOT_SERVING while the
database is stopped and SERVING again once it is back, with no restart of the
exchange."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from exchange_client import ExchangeClient, Unavailable
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator, wait_until
from tests.postgres import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: the test stops and starts it."""
    with PostgresServer() as server:
        yield server


def metric(port: int, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def add_partner(database: str, name: str, sector: str) -> dict[str, Any]:
    out = subprocess.run(
        [EXCHANGE, "partner", "add", "--database", database, "--name", name, "--sector",
         sector, "--json"],
        capture_output=True, check=True, timeout=60, env=dict(os.environ),
    ).stdout  # fmt: skip
    doc = orjson.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_metrics_move_and_health_follows_the_database(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    database = own_postgres.create_database()
    metrics_port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        "--database", database, "--metrics-listen", f"127.0.0.1:{metrics_port}",
        env={"EXCHANGE_POSTGRES_TIMEOUT_S": "2"},
    )  # fmt: skip
    try:
        ngo = add_partner(database, "Harbor Light Alliance", "non-profit")
        assert readyz(metrics_port) == 200
        accepted = metric(metrics_port, "exchange_objects_accepted_total")
        submissions = metric(metrics_port, "exchange_submissions_total", outcome="accepted")
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            objects = [indicator(ngo["identity_id"], n=i, tlp=Tlp.GREEN) for i in range(5)]
            assert client.submit(bundle(objects)).ok
        assert metric(metrics_port, "exchange_objects_accepted_total") == accepted + 5
        assert (
            metric(metrics_port, "exchange_submissions_total", outcome="accepted")
            == submissions + 1
        )
        wait_until(
            lambda: metric(metrics_port, "exchange_relay_published_rows_total") >= 5,
            30,
            "the relay to publish",
        )

        # The database goes away: NOT_SERVING, /readyz 503, submissions UNAVAILABLE.
        own_postgres.stop()
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: health(server.target) == not_serving, 30, "NOT_SERVING")
        assert readyz(metrics_port) == 503
        assert metric(metrics_port, "exchange_dependency_up", dependency="store") == 0
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            more = [indicator(ngo["identity_id"], n=10 + i, tlp=Tlp.GREEN) for i in range(5)]
            with pytest.raises(Unavailable):
                client.submit(bundle(more), timeout=20)

        # It comes back: SERVING again, same process, and work goes on.
        own_postgres.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: health(server.target) == serving, 30, "SERVING again")
        assert readyz(metrics_port) == 200
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            assert client.submit(bundle(more)).ok
        assert metric(metrics_port, "exchange_objects_accepted_total") == accepted + 10
        log = server.log.read_text()
        assert "store" in log and "NOT_SERVING" in log
    finally:
        server.stop()
