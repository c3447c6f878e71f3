"""exchange._tasks.supervise: the loop behind the relay, the audit mirror and the tail."""

from __future__ import annotations

import asyncio

import pytest

from exchange._tasks import supervise
from exchange.errors import Unavailable

D = 0.001  # the first delay: small, the test only reads what the loop chose


async def test_failures_back_off_doubling_up_to_the_cap_and_success_resets_it() -> None:
    # What the step does on each run: raise, or return.
    script: list[Exception | None] = [
        Unavailable("down"),
        Unavailable("down"),
        Unavailable("down"),
        Unavailable("down"),
        None,
        Unavailable("down"),
        ValueError("a bug"),  # does not back off: the first delay, and the doubling restarts
        Unavailable("down"),
        Unavailable("down"),
    ]
    delays: list[tuple[str, float]] = []
    recoveries = 0
    done = asyncio.Event()

    async def step() -> None:
        if not script:
            done.set()
            await asyncio.Event().wait()  # idle until cancelled
        outcome = script.pop(0)
        if outcome is not None:
            raise outcome

    async def failed(exc: Exception, delay: float) -> None:
        delays.append((type(exc).__name__, delay))

    def recovered() -> None:
        nonlocal recoveries
        recoveries += 1

    task = asyncio.create_task(
        supervise(
            step,
            failed,
            first_delay_s=D,
            max_delay_s=5 * D,
            recovered=recovered,
            backs_off=lambda exc: not isinstance(exc, ValueError),
        )
    )
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert delays == [
        ("Unavailable", D),
        ("Unavailable", 2 * D),
        ("Unavailable", 4 * D),
        ("Unavailable", 5 * D),  # the cap
        ("Unavailable", D),  # after a success
        ("ValueError", D),
        ("Unavailable", D),
        ("Unavailable", 2 * D),
    ]
    assert recoveries == 1


async def test_a_cancellation_during_the_wait_ends_the_loop() -> None:
    failing = asyncio.Event()

    async def step() -> None:
        raise Unavailable("down")

    async def failed(exc: Exception, delay: float) -> None:
        failing.set()

    task = asyncio.create_task(supervise(step, failed, first_delay_s=60, max_delay_s=60))
    await asyncio.wait_for(failing.wait(), 10)
    task.cancel()  # lands in the 60 s wait
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
