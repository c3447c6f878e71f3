"""What the core tests put at its edges: two partners, a bus that fails on cue, a
lease that moves between two replicas, and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from exchange.auth import new_token_credential
from exchange.bus import Bus, BusReader, BusRecord, Placed, ReadRecord, Refused, TopicPartition
from exchange.errors import Unavailable
from exchange.model import Partner, PartnerKind
from exchange.store import Store
from tests.helpers import bundle

NGO = Partner(
    "ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44", kind=PartnerKind.NGO
)
PLATFORM = Partner(
    "plat-1", "Kestrel", "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7", kind=PartnerKind.TECH
)
CREDENTIALS = {p.partner_id: new_token_credential(p.partner_id) for p in (NGO, PLATFORM)}


def raw(objects: list[dict[str, object]]) -> bytes:
    return orjson.dumps(bundle(objects))


class FlakyBus:
    """A real bus whose next ``fail`` publishes fail: ``before`` the bus takes the
    records (a broker that is down), or ``after`` it took them (an answer lost on
    the way back, so the records are on the bus but the caller cannot know).
    ``on_publish`` runs at each publish, before anything else."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.fail = 0
        self.when = "before"
        self.publishes = 0
        self.on_publish: Callable[[], None] = lambda: None

    async def publish(self, records: Sequence[BusRecord]) -> list[Placed | Refused]:
        self.publishes += 1
        self.on_publish()
        if self.fail and self.when == "before":
            self.fail -= 1
            raise Unavailable("the bus is down (on cue)")
        landed = await self.bus.publish(records)
        if self.fail:
            self.fail -= 1
            raise Unavailable("the bus's answer was lost (on cue)")
        return landed

    async def start(self) -> None:
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.close()

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        await self.bus.ensure_topics(topics)

    async def partitions(self, topic: str) -> list[int]:
        return await self.bus.partitions(topic)

    async def open_reader(
        self, start: Mapping[TopicPartition, int | None], *, prefetch_bytes: int | None = None
    ) -> BusReader:
        return await self.bus.open_reader(start, prefetch_bytes=prefetch_bytes)

    async def ping(self) -> None:
        await self.bus.ping()


@dataclass
class Lease:
    """Which replica holds the relay lease (the SQLite store grants it to anyone)."""

    holder: str


class Replica:
    """One replica's view of a shared store: the lease is its own when ``lease``
    names it; everything else is the store's."""

    def __init__(self, store: Store, lease: Lease, name: str) -> None:
        self._store = store
        self._lease = lease
        self._name = name
        self.looks = 0  # how often it asked for the lease

    async def hold_lease(self, job: str) -> bool:
        self.looks += 1
        return self._lease.holder == self._name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def eventually(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    what: str,
    timeout_s: float = 10.0,
) -> None:
    """Wait until ``condition`` holds, failing after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def read_topic(bus: Bus, topic: str) -> list[ReadRecord]:
    """Every record on ``topic`` now, in offset order (partition by partition)."""
    out: list[ReadRecord] = []
    for partition in await bus.partitions(topic):
        reader = await bus.open_reader({(topic, partition): None})
        try:
            while batch := await reader.read(1000, 0.05):
                out += batch
        finally:
            await reader.close()
    return out
