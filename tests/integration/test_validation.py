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
from exchange.model import Rejection, Tlp, ValidObject
from exchange.stix import fast_validate
from exchange.validation import Validator, chunk_by_cost, estimated_cost
from tests.helpers import indicator

IDENTITY = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"


def costly(n: int) -> dict[str, Any]:
    """A valid indicator that takes the full (stix2) path, ~15 ms: 60 comparisons, and a
    comment, which the fast path leaves to the full one."""
    terms = " AND ".join(f"url:value = 'u{n}-{i}'" for i in range(60))
    return indicator(IDENTITY, n=n, pattern=f"[{terms} /* seen {n} */]")


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


def test_costly_objects_take_the_full_path() -> None:
    # What the scheduling tests below rely on.
    assert fast_validate(costly(1), 0, IDENTITY, Tlp.GREEN, Limits()) is None
    assert fast_validate(indicator(IDENTITY, n=1), 0, IDENTITY, Tlp.GREEN, Limits()) is not None


async def test_small_bundles_take_the_fast_path_here_and_the_rest_goes_to_the_workers(
    validator: Validator,
) -> None:
    metrics = validator._metrics  # the counters a server exports

    def counted(path: str) -> float:
        return float(metrics.validated_objects.labels(path)._value.get())

    # A small bundle of plain objects: validated in this process, no worker involved.
    small = [indicator(IDENTITY, n=n) for n in range(5)]
    assert all(isinstance(r, ValidObject) for r in await validate(validator, "p", small))
    assert validator.chunks_run == 0
    assert (counted("fast"), counted("full")) == (5, 0)
    # The objects the fast path cannot decide (a costly pattern, a mistake) go to the
    # workers, in chunks by their cost; the answers keep the bundle's order.
    mixed = [indicator(IDENTITY, n=10), costly(11), indicator(IDENTITY, n=12, confidence=101)]
    results = await validate(validator, "p", mixed)
    assert [r.object_id for r in results] == [o["id"] for o in mixed]
    assert [type(r) for r in results] == [ValidObject, ValidObject, Rejection]
    assert validator.chunks_run == 1
    assert (counted("fast"), counted("full")) == (6, 2)
    # A large bundle: the fast pass runs on the workers in a few large chunks.
    large = [indicator(IDENTITY, n=100 + n) for n in range(600)]
    results = await validate(validator, "p", large)
    assert all(isinstance(r, ValidObject) for r in results)
    assert [r.index for r in results] == list(range(600))
    assert 1 + 2 <= validator.chunks_run <= 1 + 4
    assert (counted("fast"), counted("full")) == (606, 2)


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
    # Another partner's one object, which needs a worker too, is validated while the
    # bulk one is still running: it waits for the chunks on the workers, not for the
    # whole bundle.
    (one,) = await validate(validator, "other-partner", [costly(1000)])
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
    # None of the cancelled chunks ran (and the small bundle needed no worker).
    assert validator.chunks_run == started


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
