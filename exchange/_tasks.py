"""Stopping background tasks (the relay, the recorder, watchers, readers)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel every task given (``None`` is skipped), then wait until each has ended."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
