"""Attacks and accidents that reach the store, each against a real `exchange serve`
process on both stores: text a database cannot store (NUL characters, defect 13),
and a disk that fills up (defect 14)."""

from __future__ import annotations

import contextlib
import random
import string
import urllib.error
import urllib.request
from typing import Any

import pytest
from exchange_client import ExchangeError

from exchange.model import Tlp
from tests.adversarial.harness import STORES, Exchange, ExchangeFactory, Partner
from tests.diskspace import MIB, SmallDisk, database_on_small_disk, small_disk
from tests.helpers import bundle, indicator, wait_until

NUL = "\x00"


@STORES
def test_nul_characters_are_refused_per_object_alike_on_both_stores(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    """Defect 13: a NUL in any string (a value, a list item, a property name) refuses
    that object with a reason naming the property; the clean object beside it is
    stored; never INTERNAL, on SQLite as on PostgreSQL."""
    exchange = exchange_factory(store=store)
    attacker = exchange.add_partner("attacker")
    bystander = exchange.add_partner("bystander")
    clean = indicator(attacker.identity, n=0)
    reference = {"source_name": "hotline", f"descr{NUL}iption": "a case file"}
    objects = [
        clean,
        indicator(attacker.identity, n=1, description=f"recruiter{NUL}lure"),
        indicator(attacker.identity, n=2, labels=("trafficking:recruitment", f"x{NUL}")),
        indicator(attacker.identity, n=3, name=NUL),
        indicator(attacker.identity, n=4, external_references=[reference]),
    ]
    with exchange.client(attacker) as client:
        result = client.submit(bundle(objects))
        assert result.accepted == [clean["id"]]
        assert [(r.index, r.object_id, r.property) for r in result.rejected] == [
            (1, objects[1]["id"], "description"),
            (2, objects[2]["id"], "labels[1]"),
            (3, objects[3]["id"], "name"),
            (4, objects[4]["id"], "external_references[0].descr\\u0000iption"),
        ]
        for rejected in result.rejected:
            assert "NUL characters (U+0000)" in rejected.expected, rejected
        assert client.get(clean["id"]).object_id == clean["id"]
    # The bystander receives the clean object, and nothing else.
    with exchange.client(bystander) as client:
        feed = client.subscribe(from_beginning=True, timeout=60)
        try:
            assert next(iter(feed)).object_id == clean["id"]
        finally:
            feed.close()
    log = exchange.server.log.read_text(errors="replace")
    assert "internal error" not in log and "Traceback" not in log


# -- a full disk --------------------------------------------------------------------------------


def _text(rng: random.Random, size: int) -> str:
    """Text that takes its size on disk (no compression shrinks it)."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=size))


def large_bundle(partner: Partner, attempt: int, rng: random.Random) -> dict[str, Any]:
    """Ten indicators of about 60 KB each."""
    return bundle(
        indicator(
            partner.identity,
            n=attempt * 100 + i,
            tlp=Tlp.GREEN,
            description=_text(rng, 60_000),
        )
        for i in range(10)
    )


def readyz(exchange: Exchange) -> tuple[int, str]:
    url = f"http://127.0.0.1:{exchange.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def serving(exchange: Exchange) -> bool:
    return exchange.server.serving()


def store_lines(exchange: Exchange) -> list[str]:
    """What the store told the operator about its room (the server logs as text)."""
    log = exchange.server.log.read_text(errors="replace")
    return [line for line in log.splitlines() if " exchange.store._room: " in line]


@STORES
def test_a_full_disk_answers_unavailable_and_the_exchange_recovers(
    exchange_factory: ExchangeFactory, store: str, request: pytest.FixtureRequest
) -> None:
    """Defect 14: with the store's disk full, every submission answers UNAVAILABLE
    saying the exchange cannot store right now (not INTERNAL, ~280 times with a
    traceback each); health and /readyz say NOT_SERVING; the operator is told once
    (a log line, exchange_store_full); once space is freed the same process serves
    again, and nothing acknowledged is lost."""
    rng = random.Random(14)
    with contextlib.ExitStack() as stack:
        disk: SmallDisk
        if store == "sqlite":
            # The data directory itself is the small disk (the server's log is not on it).
            disk = stack.enter_context(small_disk(48 * MIB))
            exchange = exchange_factory(store=store, data_dir=str(disk.path))
        else:
            url, disk = stack.enter_context(
                database_on_small_disk(request.getfixturevalue("postgres"), 64 * MIB)
            )
            exchange = exchange_factory(store=store, database=url)
        stack.callback(exchange.stop)  # before the disk goes
        ngo = exchange.add_partner("ngo")
        reader = exchange.add_partner("reader")

        acknowledged: list[str] = []
        with exchange.client(ngo, timeout=60) as client:
            acknowledged += client.submit(large_bundle(ngo, 0, rng)).accepted
            assert len(acknowledged) == 10
            disk.fill()

            refused: ExchangeError | None = None
            for attempt in range(1, 40):
                try:
                    acknowledged += client.submit(large_bundle(ngo, attempt, rng)).accepted
                except ExchangeError as exc:
                    refused = exc
                    break
            assert refused is not None, "the disk never filled up"
            assert refused.code == "UNAVAILABLE", refused
            # The partner is not told where the data lives (the operator's log says).
            assert refused.details == (
                "the exchange cannot store anything right now: its storage is full;"
                " nothing of this call was stored; retry later"
            )

            wait_until(lambda: not serving(exchange), 30, "health to say NOT_SERVING")
            status, body = readyz(exchange)
            assert status == 503 and body.startswith("NOT_SERVING: store: ") and "is full" in body
            assert exchange.metric("exchange_store_full") == 1
            # However often partners try meanwhile: UNAVAILABLE, never INTERNAL.
            kept = large_bundle(ngo, 99, rng)
            for _ in range(10):
                with pytest.raises(ExchangeError) as again:
                    client.submit(kept)
                assert again.value.code == "UNAVAILABLE"

            told = store_lines(exchange)
            assert len(told) == 1 and " is full (" in told[0], told
            log = exchange.server.log.read_text(errors="replace")
            assert "internal error" not in log and "Traceback" not in log, log[-5000:]

            disk.free()
            wait_until(lambda: serving(exchange), 60, "health to say SERVING again")
            assert readyz(exchange) == (200, "SERVING\n")
            assert exchange.metric("exchange_store_full") == 0
            told = store_lines(exchange)
            assert len(told) == 2 and " has room again after " in told[1], told
            assert "Traceback" not in exchange.server.log.read_text(errors="replace")

            # The same process takes submissions again.
            acknowledged += client.submit(kept).accepted
        assert len(acknowledged) % 10 == 0 and len(acknowledged) >= 20

        # Nothing acknowledged is lost: another partner receives every object.
        received: set[str] = set()
        with exchange.client(reader) as client:
            feed = client.subscribe(from_beginning=True, timeout=120)
            try:
                for delivery in feed:
                    received.add(delivery.object_id)
                    if received >= set(acknowledged):
                        break
            finally:
                feed.close()
        assert received == set(acknowledged)
