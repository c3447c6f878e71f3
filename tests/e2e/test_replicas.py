"""Two `exchange serve` processes sharing one PostgreSQL database and one
Kafka-protocol broker (Tansu), as replicas behind a load balancer run.

- a submission to one replica reaches a subscriber of the other;
- concurrent submissions to both keep one audit chain (`exchange audit verify`
  on the database exits 0);
- one replica is killed (SIGKILL) in the middle of a bulk submission: every
  object it acknowledged is held and delivered (the other replica's relay takes
  the outbox over), none twice;
- a replica with another audit signing key refuses to start;
- SIGTERM stops a replica cleanly (exit 0).
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient, ExchangeError

from exchange.audit.signer import Signer
from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, indicator, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PER_BUNDLE = 20
RELAYS = "this process relays the outbox now"


@dataclass
class Replicas:
    tmp: Path
    database: str
    options: list[str]
    env: dict[str, str]
    public_key: Path
    servers: list[ServerProcess] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [EXCHANGE, *args],
            capture_output=True,
            check=check,
            timeout=120,
            env={**os.environ, **self.env},
        )

    def add_partner(self, name: str, sector: str) -> dict[str, Any]:
        out = self.cli(
            "partner", "add", "--database", self.database, "--name", name, "--sector", sector,
            "--json",
        ).stdout  # fmt: skip
        doc = orjson.loads(out)
        assert isinstance(doc, dict)
        return doc

    def start(self, name: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(self.tmp / name, *self.options, env={**self.env, **(env or {})})
        self.servers.append(server)
        return server


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, tansu: str) -> Iterator[Replicas]:
    # Every replica signs checkpoints with the same key (a mounted secret in production).
    key = tmp_path / "audit-signing-key.pem"
    signer = Signer.load_or_create(key)
    public_key = tmp_path / "audit-public-key.pem"
    public_key.write_text(signer.public_key_pem)
    prefix = f"rep{uuid.uuid4().hex[:10]}"
    options = [
        "--database", postgres_url, "--kafka-bootstrap", tansu, "--no-kafka-idempotence",
        "--topic-prefix", prefix,
    ]  # fmt: skip
    env = {"EXCHANGE_AUDIT_SIGNING_KEY_FILE": str(key), "EXCHANGE_RELAY_POLL_INTERVAL_S": "0.2"}
    group = Replicas(tmp_path, postgres_url, options, env, public_key)
    try:
        yield group
    finally:
        for server in group.servers:
            server.stop()


class Collector:
    """An SDK subscription (reconnecting) in a thread, collecting object ids."""

    def __init__(self, target: str, token: str) -> None:
        self.received: list[str] = []
        self.failures: list[BaseException] = []
        self._client = ExchangeClient(target, token=token)
        self._sub = self._client.subscribe(from_beginning=True, max_backoff=1.0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for delivery in self._sub:
                self.received.append(delivery.object_id)
        except BaseException as exc:  # reported by the test
            self.failures.append(exc)

    def has(self, ids: set[str]) -> bool:
        assert not self.failures, self.failures
        return ids <= set(self.received)

    def close(self) -> None:
        self._sub.close()
        self._thread.join(10)
        self._client.close()


def submit_bundles(target: str, ngo: dict[str, Any], first: int, count: int) -> list[str]:
    """Submit ``count`` bundles one after another; the ids of the accepted objects."""
    ids: list[str] = []
    with ExchangeClient(target, token=ngo["token"]) as client:
        for n in range(first, first + count):
            objects = [
                indicator(ngo["identity_id"], n=n * PER_BUNDLE + i, tlp=Tlp.GREEN)
                for i in range(PER_BUNDLE)
            ]
            result = client.submit(bundle(objects))
            assert result.ok and len(result.accepted) == PER_BUNDLE, result
            ids.extend(o["id"] for o in objects)
    return ids


def test_replicas_share_the_store_the_bus_and_one_audit_chain(replicas: Replicas) -> None:
    ngo = replicas.add_partner("Harbor Light Alliance", "non-profit")
    platform = replicas.add_partner("Kestrel Social", "technology")
    # A first: it takes the relay lease, so the crash below hands the outbox over.
    a = replicas.start("a")
    wait_until(lambda: RELAYS in a.log.read_text(), 30, "A to take the relay lease")
    b = replicas.start("b")
    collector = Collector(b.target, platform["token"])
    try:
        # Submitted on A, received on B.
        acked = set(submit_bundles(a.target, ngo, 0, 2))
        wait_until(lambda: collector.has(acked), 60, "B's subscriber to receive A's objects")

        # Both replicas write at once: one chain, no fork.
        results: dict[str, list[str]] = {}

        def submit_to(name: str, target: str, first: int) -> None:
            results[name] = submit_bundles(target, ngo, first, 6)

        writers = [
            threading.Thread(target=submit_to, args=("a", a.target, 100)),
            threading.Thread(target=submit_to, args=("b", b.target, 200)),
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)
        assert set(results) == {"a", "b"}
        acked |= set(results["a"]) | set(results["b"])

        # Kill A (SIGKILL) in the middle of a bulk submission.
        bulk_acked: list[str] = []
        stopped: list[BaseException] = []

        def bulk() -> None:
            try:
                for n in range(300, 400):
                    bulk_acked.extend(submit_bundles(a.target, ngo, n, 1))
            except (ExchangeError, AssertionError) as exc:  # the crash ends the loop
                stopped.append(exc)

        bulk_thread = threading.Thread(target=bulk, daemon=True)
        bulk_thread.start()
        wait_until(lambda: len(bulk_acked) >= 5 * PER_BUNDLE, 60, "part of the bulk submission")
        a.kill()
        wait_until(lambda: RELAYS in b.log.read_text(), 60, "B to take the relay over")
        bulk_thread.join(60)
        assert stopped, "the submission loop should have seen the replica die"
        assert len(bulk_acked) < 100 * PER_BUNDLE
        acked |= set(bulk_acked)

        # Every acknowledged object is held (B answers for it) and delivered, once.
        wait_until(lambda: collector.has(acked), 90, "every acknowledged object at B")
        with ExchangeClient(b.target, token=platform["token"]) as client:
            for object_id in sorted(bulk_acked)[:: PER_BUNDLE // 2]:
                assert client.get(object_id).object_id == object_id
        assert len(collector.received) == len(set(collector.received)), "a repeat was delivered"
    finally:
        collector.close()

    # SIGTERM: a clean exit.
    assert b.terminate() == 0, b.log.read_text()

    verify = replicas.cli(
        "audit", "verify", "--database", replicas.database, "--public-key",
        str(replicas.public_key), check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    assert b"intact" in verify.stdout + verify.stderr


def test_a_replica_with_another_signing_key_refuses_to_start(replicas: Replicas) -> None:
    replicas.start("a")
    other = replicas.tmp / "other-key.pem"
    with pytest.raises(AssertionError, match="not the key that signs this audit log"):
        replicas.start("c", env={"EXCHANGE_AUDIT_SIGNING_KEY_FILE": str(other)})


def test_a_commit_on_one_replica_wakes_the_relay_of_the_other(replicas: Replicas) -> None:
    """The relay holder hears other replicas' commits (NOTIFY), not only its poll: with
    a one-minute poll, an object submitted to the other replica still arrives at once."""
    ngo = replicas.add_partner("Harbor Light Alliance", "non-profit")
    platform = replicas.add_partner("Kestrel Social", "technology")
    slow_poll = {"EXCHANGE_RELAY_POLL_INTERVAL_S": "60"}
    a = replicas.start("a", env=slow_poll)
    wait_until(lambda: RELAYS in a.log.read_text(), 30, "A to take the relay lease")
    b = replicas.start("b", env=slow_poll)
    collector = Collector(a.target, platform["token"])
    try:
        submitted = set(submit_bundles(b.target, ngo, 0, 1))
        wait_until(lambda: collector.has(submitted), 20, "A's relay to publish B's commit")
    finally:
        collector.close()
