"""The SDK's subscription across a crash: the server process is killed (SIGKILL) in
the middle of a subscription and started again on the same address and data; the
subscriber's iteration goes on by itself and receives every object exactly once.
On both buses."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator, wait_until

BATCHES = 6
PER_BATCH = 40


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def serve_options(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "local":
        return []
    bootstrap: str = request.getfixturevalue("tansu")
    prefix = f"restart{os.getpid()}{free_port()}"
    return ["--kafka-bootstrap", bootstrap, "--no-kafka-idempotence", "--topic-prefix", prefix]


def add_partner(data: Path, name: str, sector: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            EXCHANGE,
            "partner",
            "add",
            "--name",
            name,
            "--sector",
            sector,
            "--data-dir",
            str(data),
            "--json",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    doc = orjson.loads(out)
    assert isinstance(doc, dict)
    return doc


def test_a_killed_and_restarted_server_loses_and_repeats_nothing(
    tmp_path: Path, serve_options: list[str]
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, *serve_options)
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
    platform = add_partner(data, "Kestrel Social", "technology")
    target, port = server.target, server.port
    submitted: list[str] = []
    received: list[str] = []
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            with ExchangeClient(target, token=platform["token"]) as client:
                sub = client.subscribe(from_beginning=True, max_backoff=1.0)
                for delivery in sub:
                    received.append(delivery.object_id)
                    if len(received) >= BATCHES * PER_BATCH:
                        sub.close()
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    def submit_batch(n: int) -> None:
        objects = [
            indicator(ngo["identity_id"], n=n * PER_BATCH + i, tlp=Tlp.GREEN)
            for i in range(PER_BATCH)
        ]
        with ExchangeClient(target, token=ngo["token"]) as client:
            result = client.submit(bundle(objects))
        assert result.ok and len(result.accepted) == PER_BATCH
        submitted.extend(o["id"] for o in objects)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    try:
        for n in range(BATCHES // 2):
            submit_batch(n)
        # Mid-subscription: some, not necessarily all, of it has arrived.
        wait_until(lambda: len(received) >= PER_BATCH, 30, "the first deliveries")
        server.kill()
        server = ServerProcess(data, *serve_options, port=port)
        for n in range(BATCHES // 2, BATCHES):
            submit_batch(n)
        reader.join(60)
        assert not reader.is_alive(), f"received {len(received)} of {len(submitted)}"
    finally:
        server.stop()
    assert not failures, failures
    assert len(received) == len(set(received)), "an object was delivered twice"
    assert sorted(received) == sorted(submitted)
