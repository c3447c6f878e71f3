"""Attacks on validation: costly patterns, oversized objects, and a server killed with
its workers still running. Each against a real `exchange serve` process."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from exchange.model import Tlp
from tests.adversarial.harness import STORES, ExchangeFactory
from tests.helpers import bundle, indicator, wait_until


def costly_indicator(identity: str, n: int, comparisons: int) -> dict[str, object]:
    """A valid indicator whose pattern ANDs ``comparisons`` comparisons (costly to parse)."""
    terms = " AND ".join(f"url:value = 'u{i}'" for i in range(comparisons))
    return indicator(identity, n=n, tlp=Tlp.GREEN, pattern=f"[{terms}]")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) no longer runs.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_validation_workers_die_with_a_killed_server(exchange_factory: ExchangeFactory) -> None:
    exchange = exchange_factory(validation_workers=2)
    submitter = exchange.add_partner("ngo")
    exchange.probe(submitter, 2)  # the workers have run
    workers = exchange.children()
    assert workers, "the server runs its validation on worker processes"
    try:
        os.kill(exchange.pid, signal.SIGKILL)  # the server alone, as the OOM killer would
        exchange.server.proc.wait(30)
        wait_until(
            lambda: not any(_alive(pid) for pid in workers),
            30,
            "the validation workers of a killed server to exit",
        )
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@STORES
def test_costly_patterns_are_refused_and_do_not_stall_other_partners(
    exchange_factory: ExchangeFactory, store: str
) -> None:
    exchange = exchange_factory(store=store, validation_workers=2)
    attacker = exchange.add_partner("attacker")
    victim = exchange.add_partner("victim")
    with exchange.client(attacker) as client:
        # Past the limits: refused per object, with the limit named, before any parsing.
        result = client.submit(
            bundle([costly_indicator(attacker.identity, n, c) for n, c in ((0, 65), (1, 900))])
        )
        many, long = result.rejected
        assert "limits.max_pattern_comparisons" in many.reason and "got 65" in many.reason
        assert "limits.max_pattern_length" in long.reason
    # At the limit, in bulk, from several threads: accepted, and meanwhile the victim's
    # one-object submissions stay quick (fair turns between partners on the workers).
    attacking = threading.Event()
    attacking.set()
    errors: list[BaseException] = []

    def attack(worker: int) -> None:
        try:
            with exchange.client(attacker, timeout=600) as client:
                while attacking.is_set():
                    objects = [
                        costly_indicator(attacker.identity, worker * 100_000 + i, 64)
                        for i in range(300)
                    ]
                    client.submit(bundle(objects))
        except BaseException as exc:  # reported below
            errors.append(exc)

    # As many at once as the partner may have (limits.max_submissions_per_partner).
    threads = [threading.Thread(target=attack, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    try:
        # A generous deadline: on a busy 2-core machine building and sending the first
        # bundles of 300 costly objects can take most of a minute.
        wait_until(lambda: exchange.metric("exchange_submissions_in_progress") >= 2, 180)
        latencies = exchange.probe(victim, 30)
    finally:
        attacking.clear()
        for thread in threads:
            thread.join(600)
    assert not errors, errors
    assert latencies.p99 < 1.0, latencies
    assert (
        exchange.metric("exchange_limit_refusals_total", limit="limits.max_pattern_comparisons")
        == 1
    )
