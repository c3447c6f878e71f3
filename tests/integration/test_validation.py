"""Validation on real worker processes: partners take turns, a cancelled submission's
work is dropped, and a dead worker is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from exchange.config import Limits
from exchange.errors import Unavailable
from exchange.model import Tlp, ValidObject
from exchange.validation import Validator, chunk_by_cost, estimated_cost
from tests.helpers import indicator

IDENTITY = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"


def costly(n: int) -> dict[str, Any]:
    terms = " AND ".join(f"url:value = 'u{n}-{i}'" for i in range(60))
    return indicator(IDENTITY, n=n, pattern=f"[{terms}]")


async def validate(validator: Validator, partner: str, objects: list[Any]) -> list[Any]:
    return await validator.validate(
        objects,
        [estimated_cost(o) for o in objects],
        partner_id=partner,
        submitter_identity=IDENTITY,
        default_tlp=Tlp.GREEN,
        limits=Limits(),
    )


async def wait_for(condition: Any, what: str, timeout_s: float = 60) -> None:
    """Poll ``condition`` (a counter the validator moves) with a deadline."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (nothing to wait on but the counter)
            await asyncio.sleep(0.01)


@pytest.fixture
async def validator() -> Any:
    instance = Validator(workers=2)
    await instance.warm_up()
    try:
        yield instance
    finally:
        instance.close()


def test_chunks_follow_the_estimated_cost() -> None:
    plain = estimated_cost(indicator(IDENTITY))
    heavy = estimated_cost(costly(1))
    assert heavy > 10 * plain
    refs = [{"source_name": f"s{i}"} for i in range(500)]
    assert estimated_cost(indicator(IDENTITY, external_references=refs)) > 500
    # Cheap objects share chunks, costly ones go alone, nothing is lost or repeated.
    costs = [plain] * 100 + [heavy] * 3 + [10 * heavy] * 2 + [plain] * 5
    slices = chunk_by_cost(costs)
    assert [i for start, end in slices for i in range(start, end)] == list(range(len(costs)))
    assert (103, 104) in slices and (104, 105) in slices
    for start, end in slices:
        assert end - start <= 64
        assert end - start == 1 or sum(costs[start:end]) <= 300
    assert estimated_cost("not an object") > 0


async def test_partners_take_turns_on_the_workers(validator: Validator) -> None:
    bulk = [costly(n) for n in range(300)]
    first = asyncio.create_task(validate(validator, "bulk-partner", bulk))
    await wait_for(lambda: validator.chunks_run >= 2, "the bulk submission to start")
    # Another partner's one object is validated while the bulk one is still running:
    # it waits for the chunks on the workers, not for the whole bundle.
    (one,) = await validate(validator, "other-partner", [indicator(IDENTITY, n=1)])
    assert isinstance(one, ValidObject)
    assert not first.done()
    results = await first
    assert [r.object_id for r in results] == [o["id"] for o in bulk]
    assert all(isinstance(r, ValidObject) for r in results)


async def test_a_cancelled_submission_stops_taking_turns(validator: Validator) -> None:
    bulk = [costly(n) for n in range(300)]
    task = asyncio.create_task(validate(validator, "gone", bulk))
    await wait_for(lambda: validator.chunks_run >= 2, "the submission to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Its chunks waiting are dropped at once, with the objects they hold.
    assert validator.chunks_waiting == 0
    started = validator.chunks_run
    (one,) = await validate(validator, "next", [indicator(IDENTITY, n=2)])
    assert isinstance(one, ValidObject)
    assert validator.chunks_run == started + 1  # none of the cancelled chunks ran


def _workers() -> list[int]:
    """This process's spawned worker processes (not multiprocessing's resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
    return found


async def test_a_dead_worker_is_replaced(validator: Validator) -> None:
    bulk = [costly(n) for n in range(300)]
    task = asyncio.create_task(validate(validator, "unlucky", bulk))
    await wait_for(lambda: validator.chunks_run >= 2, "the submission to start")
    os.kill(_workers()[0], signal.SIGKILL)
    with pytest.raises(Unavailable, match="submit it again"):
        await task
    assert validator.pool_restarts == 1
    (one,) = await validate(validator, "next", [indicator(IDENTITY, n=3)])
    assert isinstance(one, ValidObject)
