"""A real exchange under attack: an `exchange serve` process (SQLite or PostgreSQL store,
embedded or Kafka bus) with partners registered through the CLI, and what an attack
test measures on it: the server's memory, its metrics, and how long an honest
partner's one-object submission takes meanwhile.

    def test_something(exchange_factory: ExchangeFactory) -> None:
        exchange = exchange_factory(store="postgres", bus="kafka", limits={...})
        attacker = exchange.add_partner("attacker")
        victim = exchange.add_partner("victim")
        ... attack ...
        assert exchange.rss_bytes() < 1_500_000_000
        assert exchange.probe(victim).p99 < 1.0

Settings are given as TOML sections (``limits={"max_pattern_comparisons": 8}``) and
written to a config file, so every attack runs the same way an operator runs the server.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest
from exchange_client import ExchangeClient

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator

__all__ = [
    "BUSES",
    "STORES",
    "Exchange",
    "ExchangeFactory",
    "Latencies",
    "Partner",
    "rss_of",
]

# Parametrize a test over both stores / both buses: ``@STORES`` then take ``store``.
STORES = pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
BUSES = pytest.mark.parametrize("bus", ["local", pytest.param("kafka", marks=pytest.mark.kafka)])


@dataclass(frozen=True)
class Partner:
    name: str
    partner_id: str
    identity: str
    token: str


@dataclass(frozen=True)
class Latencies:
    """Durations (seconds) of an honest partner's one-object submissions."""

    seconds: Sequence[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]

    @property
    def worst(self) -> float:
        return max(self.seconds)


def rss_of(pid: int) -> int:
    """Resident memory of a process, in bytes (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _config(top: Mapping[str, Any], sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
    for name, section in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in section.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Exchange:
    """One `exchange serve` process and the way to reach its store from the CLI."""

    tmp: Path
    store: str
    bus: str
    config: Path
    server: ServerProcess
    metrics_port: int
    topic_prefix: str
    kafka_bootstrap: str = ""
    partners: dict[str, Partner] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.server.target

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`exchange ARGS --config FILE` (the server's own store), output as text."""
        return subprocess.run(
            [EXCHANGE, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def add_partner(
        self,
        name: str,
        *,
        kind: str = "tech",
        roles: Sequence[str] = ("submit", "subscribe"),
        communities: Sequence[str] = (),
    ) -> Partner:
        options = [f"--role={role}" for role in roles]
        options += [f"--community={c}" for c in communities]
        slug = f"{name}-{uuid.uuid4().hex[:6]}"
        doc = orjson.loads(
            self.cli(
                "partner", "add", "--name", slug, "--kind", kind, "--sector", "technology",
                *options, "--json",
            ).stdout
        )  # fmt: skip
        partner = Partner(name, doc["partner_id"], doc["identity_id"], doc["token"])
        self.partners[name] = partner
        return partner

    def client(self, partner: Partner, **options: Any) -> ExchangeClient:
        return ExchangeClient(self.target, token=partner.token, **options)

    def rss_bytes(self, *, with_children: bool = False) -> int:
        """The server's resident memory (with its validation workers if asked)."""
        total = rss_of(self.pid)
        if with_children:
            for child in _children(self.pid):
                try:
                    total += rss_of(child)
                except FileNotFoundError:
                    continue
        return total

    def children(self) -> list[int]:
        return _children(self.pid)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when the series does not exist yet)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "")
        for line in self.metrics().splitlines():
            if re.match(pattern + r" ", line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def probe(
        self,
        partner: Partner,
        count: int = 40,
        *,
        during: Callable[[], bool] | None = None,
        tlp: Tlp = Tlp.GREEN,
    ) -> Latencies:
        """An honest partner's one-object submissions, one after the other: ``count``
        of them (or, with ``during``, as long as it answers True, at least 5), each
        timed from call to answer. Each must be accepted."""
        seconds: list[float] = []
        # A stalled exchange fails the probe within the timeout, not the test's.
        with self.client(partner, timeout=30) as client:
            n = 0
            while (n < count) if during is None else (n < 5 or during()):
                obj = indicator(partner.identity, n=n, tlp=tlp)
                started = time.monotonic()
                result = client.submit(bundle([obj]))
                seconds.append(time.monotonic() - started)
                assert len(result.accepted) == 1, result
                n += 1
        return Latencies(seconds)

    def stop(self) -> None:
        self.server.stop()


class ExchangeFactory(Protocol):
    def __call__(
        self,
        *,
        store: str = "sqlite",
        bus: str = "local",
        **sections: Any,
    ) -> Exchange: ...


@pytest.fixture
def exchange_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ExchangeFactory]:
    """Start exchanges for a test (stopped at its end, by pid). The PostgreSQL server
    and Tansu broker are session fixtures, started only if a test asks for them."""
    started: list[Exchange] = []

    def start(*, store: str = "sqlite", bus: str = "local", **sections: Any) -> Exchange:
        tmp = tmp_path / f"exchange-{len(started)}"
        tmp.mkdir()
        top: dict[str, Any] = {
            "data_dir": str(tmp / "data"),
            "topic_prefix": f"adv{uuid.uuid4().hex[:10]}",
        }
        # Sections ([limits] ...) are mappings; anything else is a top-level setting.
        given = {name: dict(v) for name, v in sections.items() if isinstance(v, Mapping)}
        top.update({name: v for name, v in sections.items() if not isinstance(v, Mapping)})
        given.setdefault("relay", {}).setdefault("poll_interval_s", 0.2)
        if store == "postgres" and "database" not in top:
            top["database"] = request.getfixturevalue("postgres_url")
        if bus == "kafka":
            kafka = given.setdefault("kafka", {})
            kafka.setdefault("bootstrap", request.getfixturevalue("tansu"))
            kafka.setdefault("enable_idempotence", False)
            kafka.setdefault("partitions", 2)
        metrics_port = free_port()
        given.setdefault("metrics", {})["listen"] = f"127.0.0.1:{metrics_port}"
        config = tmp / "exchange.toml"
        config.write_text(_config(top, given))
        server = ServerProcess(Path(top["data_dir"]), "--config", str(config))
        exchange = Exchange(
            tmp,
            store,
            bus,
            config,
            server,
            metrics_port,
            top["topic_prefix"],
            kafka_bootstrap=given.get("kafka", {}).get("bootstrap", ""),
        )
        started.append(exchange)
        return exchange

    try:
        yield start
    finally:
        for exchange in started:
            exchange.stop()
