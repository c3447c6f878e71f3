"""Operator commands: `exchange config check`, `exchange db migrate`,
`exchange health`, the refusal of plain gRPC on a reachable address, and a
graceful SIGTERM with an open subscription."""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient

from exchange.config import Settings
from exchange.model import Tlp
from exchange.server import check_listen, is_loopback
from exchange.store.sqlite import SCHEMA_VERSION
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator, mixed_indicators, wait_until


def exchange(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    return {**env, **extra}


def test_config_check_prints_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        'database = "postgresql://exchange:file-secret@db.internal:5432/exchange"\n'
        '[kafka]\nbootstrap = "kafka-1:9092"\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "exchange"\n'
    )
    env = clean_env(EXCHANGE_KAFKA_SASL_PASSWORD="env-secret")
    out = exchange("config", "check", "--config", str(config), env=env)
    assert out.returncode == 0, out.stderr
    assert "file-secret" not in out.stdout + out.stderr
    assert "env-secret" not in out.stdout + out.stderr
    assert 'sasl_password = "***"' in out.stdout
    assert "# env EXCHANGE_KAFKA_SASL_PASSWORD" in out.stdout
    assert "postgresql://exchange:***@db.internal:5432/exchange" in out.stdout
    assert "settings are valid" in out.stderr

    doc = orjson.loads(
        exchange("config", "check", "--config", str(config), "--json", env=env).stdout
    )
    assert doc["valid"] is True
    assert doc["settings"]["kafka.sasl_mechanism"] == {"value": "SCRAM-SHA-512", "source": "file"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('listen = "0.0.0.0:50051"\n', "refusing to listen on 0.0.0.0:50051 without TLS"),
        ('[tls]\ncert_file = "/nonexistent.pem"\nkey_file = "/nonexistent.key"\n', "cannot read"),
        ('[kafka]\nbootstrap = "k:9092"\nsecurity_protocol = "TLS"\n', "security_protocol"),
        ("[kafka]\npartitions = 'three'\n", "kafka.partitions"),
        ("listen = \n", "not valid TOML"),
        ('database = "mysql://x"\n', "postgresql://"),
        ('database = "postgresql://u:hunter2@db:port/x"\n', "port 'port' is not a number"),
        ('database = "postgresql://u@[::1/x"\n', "database is not a valid URL"),
        ('listen = "localhost"\n', "listen 'localhost' is not HOST:PORT"),
        ('[metrics]\nlisten = "9464"\n', "metrics.listen '9464' is not HOST:PORT"),
    ],
)
def test_config_check_names_each_problem(tmp_path: Path, content: str, problem: str) -> None:
    config = tmp_path / "exchange.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n{content}')
    out = exchange("config", "check", "--config", str(config), env=clean_env())
    assert out.returncode == 2
    assert problem in out.stderr
    assert "hunter2" not in out.stdout + out.stderr


def test_plain_grpc_is_refused_on_a_reachable_address(tmp_path: Path) -> None:
    out = exchange("serve", "--data-dir", str(tmp_path), "--listen", f"0.0.0.0:{free_port()}")
    assert out.returncode == 1
    assert "without TLS" in out.stderr and "--insecure" in out.stderr
    assert not (tmp_path / "exchange.sqlite3").exists(), "it refused before opening anything"


def test_which_addresses_need_tls() -> None:
    for loopback in ("127.0.0.1:1", "127.1.2.3:1", "localhost:1", "[::1]:1"):
        assert is_loopback(loopback), loopback
        check_listen(Settings(listen=loopback))
    for reachable in ("0.0.0.0:1", "[::]:1", "10.0.0.5:1", "exchange.example.org:1"):
        assert not is_loopback(reachable), reachable
        check_listen(Settings(listen=reachable, insecure=True))
    with pytest.raises(Exception, match="without TLS"):
        check_listen(Settings(listen="10.0.0.5:443"))


def test_db_migrate_on_a_data_directory(tmp_path: Path) -> None:
    first = exchange("db", "migrate", "--data-dir", str(tmp_path / "data"), env=clean_env())
    assert first.returncode == 0, first.stderr
    assert f"schema migrated from version 0 to {SCHEMA_VERSION}" in first.stdout
    again = exchange("db", "migrate", "--data-dir", str(tmp_path / "data"), env=clean_env())
    assert f"schema version {SCHEMA_VERSION}, nothing to do" in again.stdout


@pytest.mark.postgres
def test_db_migrate_and_partner_add_on_postgresql(postgres_url: str) -> None:
    first = exchange("db", "migrate", "--database", postgres_url, env=clean_env())
    assert first.returncode == 0, first.stderr
    assert "schema migrated from version 0 to" in first.stdout
    again = exchange("db", "migrate", "--database", postgres_url, env=clean_env())
    assert "nothing to do" in again.stdout
    added = exchange(
        "partner", "add", "--database", postgres_url, "--name", "Exchange Operations",
        "--sector", "non-profit", "--role", "admin", "--json", env=clean_env(),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    partner = orjson.loads(added.stdout)
    listed = exchange("partner", "list", "--database", postgres_url, "--json", env=clean_env())
    assert partner["partner_id"] in listed.stdout


def test_health_command_and_graceful_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    try:
        ok = exchange("health", "--target", server.target)
        assert ok.returncode == 0 and "SERVING" in ok.stdout
        ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
        platform = add_partner(data, "Kestrel Social", "technology")
        received: list[str] = []
        reconnects: list[Any] = []

        def consume() -> None:
            with ExchangeClient(server.target, token=platform["token"]) as client:
                sub = client.subscribe(
                    from_beginning=True,
                    max_backoff=0.5,
                    on_reconnect=lambda _attempt, failure: reconnects.append(failure),
                )
                for delivery in sub:
                    received.append(delivery.object_id)
                    if len(received) >= 20:
                        sub.close()

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        first = [indicator(ngo["identity_id"], n=i, tlp=Tlp.GREEN) for i in range(10)]
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            assert client.submit(bundle(first)).ok
        wait_until(lambda: len(received) >= 10, 30, "the first deliveries")

        # SIGTERM with an open subscription: a prompt, clean exit...
        assert server.terminate(timeout_s=30) == 0, server.log.read_text()
        log = server.log.read_text()
        assert "shutting down" in log
        down = exchange("health", "--target", server.target, "--timeout", "1")
        assert down.returncode == 1

        # ...and the subscriber resumes from its cursor on the next server.
        server = ServerProcess(data, port=server.port)
        second = [indicator(ngo["identity_id"], n=100 + i, tlp=Tlp.GREEN) for i in range(10)]
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            assert client.submit(bundle(second)).ok
        reader.join(60)
        assert not reader.is_alive(), f"received {len(received)}"
        assert reconnects, "the stream should have ended and been resumed"
        assert "shutting down; resume from your last cursor" in str(reconnects[0])
        assert sorted(received) == sorted(o["id"] for o in first + second)
    finally:
        server.stop()


def add_partner(data: Path, name: str, sector: str) -> dict[str, Any]:
    out = exchange(
        "partner", "add", "--name", name, "--sector", sector, "--data-dir", str(data), "--json"
    )
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def test_sigterm_lets_an_inflight_submission_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    metrics_port = free_port()
    # A grace period that a busy 2-core machine cannot outrun: what is tested is that
    # the submission finishes within it, not how fast it is.
    server = ServerProcess(
        data,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        env={"EXCHANGE_SHUTDOWN_GRACE_S": "600"},
    )
    try:
        ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
        objects = mixed_indicators(ngo["identity_id"], 8000)
        results: list[Any] = []

        def submit() -> None:
            with ExchangeClient(server.target, token=ngo["token"]) as client:
                results.append(client.submit(bundle(objects), timeout=600))

        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        wait_until(lambda: in_progress(metrics_port) >= 1, 60, "the submission to reach the server")
        assert server.terminate(timeout_s=660) == 0, server.log.read_text()
        submitter.join(60)
        assert results and results[0].ok and len(results[0].accepted) == len(objects)
        log = server.log.read_text()
        # The answer was given after the shutdown began.
        assert log.index("exchange: shutting down") < log.index("ExchangeService/Submit OK")

        server = ServerProcess(data, port=server.port)
        with ExchangeClient(server.target, token=ngo["token"]) as client:
            for obj in objects[:: len(objects) // 8]:
                assert client.get(obj["id"]).object_id == obj["id"]
    finally:
        server.stop()


def in_progress(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("exchange_submissions_in_progress "):
                return float(line.split()[1])
    return 0.0
