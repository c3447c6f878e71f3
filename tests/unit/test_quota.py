"""Per-partner quotas: refusals past the limit, turns taken in order, nothing leaked."""

from __future__ import annotations

import asyncio

import pytest

from exchange.errors import ResourceExhausted
from exchange.metrics import Metrics
from exchange.quota import PartnerQuota


def quota(limit: int, at_once: int | None = None) -> tuple[PartnerQuota, Metrics]:
    metrics = Metrics(process=False)
    made = PartnerQuota(limit, setting="limits.x", what="calls", metrics=metrics, at_once=at_once)
    return made, metrics


def test_a_partner_is_refused_past_its_limit_and_others_are_not() -> None:
    q, metrics = quota(2)
    q.acquire("a")
    q.acquire("a")
    with pytest.raises(ResourceExhausted, match=r"already has 2 calls in progress.*limits.x = 2"):
        q.acquire("a")
    q.acquire("b")
    q.release("a")
    q.acquire("a")
    assert metrics.limit_refusals.labels("limits.x")._value.get() == 1


def test_by_bytes_one_thing_alone_always_passes() -> None:
    q, _ = quota(100)
    # Alone: let through, however large.
    with q.hold("a", 500), pytest.raises(ResourceExhausted):
        q.acquire("a", 1)
    with q.hold("a", 60), q.hold("a", 40), pytest.raises(ResourceExhausted):
        q.acquire("a", 1)
    assert q.in_progress("a") == 0


async def test_calls_wait_their_turn_in_order_and_cancelled_ones_pass_it_on() -> None:
    q, _ = quota(4, at_once=1)
    order: list[str] = []
    await q.enter("a")  # running

    async def call(name: str) -> None:
        await q.enter("a")
        order.append(name)

    second = asyncio.create_task(call("second"))
    third = asyncio.create_task(call("third"))
    gone = asyncio.create_task(call("gone"))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted):  # 1 running + 3 waiting: the limit
        await q.enter("a")
    gone.cancel()
    await asyncio.sleep(0)
    assert q.in_progress("a") == 3
    q.leave("a")
    await second
    assert order == ["second"]
    assert not third.done()
    q.leave("a")
    await third
    assert order == ["second", "third"]
    q.leave("a")
    assert q.in_progress("a") == 0
    await q.enter("a")  # nobody left: runs at once
    q.leave("a")
