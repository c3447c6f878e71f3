"""Background tasks: running one under supervision, and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

__all__ = ["cancel_and_wait", "retrieve_failure", "supervise"]


async def cancel_and_wait(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel every task given (``None`` is skipped), then wait until each has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def retrieve_failure(task: asyncio.Task[Any]) -> None:
    """A done callback for a task whose caller may stop waiting for it: its failure is
    raised to whoever awaits it, and one nobody awaits is dropped without asyncio's
    "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


def _always(exc: Exception) -> bool:
    return True


async def supervise(
    step: Callable[[], Awaitable[object]],
    failed: Callable[[Exception, float], Awaitable[None]],
    *,
    first_delay_s: float,
    max_delay_s: float,
    recovered: Callable[[], object] | None = None,
    backs_off: Callable[[Exception], bool] = _always,
) -> NoReturn:
    """Run ``step`` over and over until cancelled (the step paces itself).

    When it raises, ``failed(error, delay)`` logs (and counts) the failure, then the
    loop waits ``delay`` and runs the step again. The delay starts at
    ``first_delay_s`` and doubles with each failure that ``backs_off`` (up to
    ``max_delay_s``); any other failure waits ``first_delay_s`` and starts the
    doubling over, as a success does (which also calls ``recovered``). A cancellation
    ends the loop at once, wherever it lands."""
    delay = first_delay_s
    while True:
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - handed to failed(), which logs it; the loop goes on
            if backs_off(exc):
                wait, delay = delay, min(delay * 2, max_delay_s)
            else:
                wait = delay = first_delay_s
            await failed(exc, wait)
            await asyncio.sleep(wait)
            continue
        delay = first_delay_s
        if recovered is not None:
            recovered()
