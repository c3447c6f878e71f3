"""Group commit: concurrent ``commit_objects`` calls share one store transaction.

Each call queues its submission; one leader task (started by the first call that
finds none running) takes whatever has queued and commits it in one transaction,
then takes what queued meanwhile, and so on until the queue is empty. A call
that finds the store idle is committed at once (it waits for nobody); calls that
arrive while a transaction (and its fsync) runs are committed together in the next
one. Nothing waits for a window to fill, so the only setting is how much one
transaction may take (``MAX_GROUP_OBJECTS``).

Each store runs a group in its own way (``run``): one submission alone exactly as
before; several inside one transaction, each in a savepoint of its own, so that one
that fails (a constraint, a NUL character) is rolled back alone and its caller gets
its error while the others commit. Each submission keeps its own audit entries (in
the order the submissions were taken), results and receipts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from exchange.model import Audience, Partner, Rejection, ValidObject
from exchange.store import Committed

__all__ = ["MAX_GROUP_OBJECTS", "GroupCommits", "Outcome", "Submission"]

# At most this many objects (and rejections) per shared transaction, so that a
# group's latency stays that of a large bundle; one submission larger than this
# goes alone.
MAX_GROUP_OBJECTS = 10_000


class Submission(NamedTuple):
    """One ``commit_objects`` call."""

    submitter: Partner
    objects: Sequence[tuple[ValidObject, Audience]]
    accepted_at: float
    widen: Callable[[Audience, Audience], Audience]
    rejected: Sequence[Rejection]

    @property
    def size(self) -> int:
        return len(self.objects) + len(self.rejected)


# What a submission came to: its results, or the error its caller gets.
Outcome = list[Committed] | BaseException


class GroupCommits:
    """The queue of submissions of one store. ``run`` commits a group (in
    ``transactions`` transactions, which it counts) and returns one outcome per
    submission, in order."""

    def __init__(
        self,
        run: Callable[[Sequence[Submission]], Awaitable[list[Outcome]]],
        max_objects: int = MAX_GROUP_OBJECTS,
    ) -> None:
        self._run = run
        self._max_objects = max_objects
        self._queue: list[tuple[Submission, asyncio.Future[list[Committed]]]] = []
        self._leader: asyncio.Task[None] | None = None
        # Store transactions that committed submissions (tests and benchmarks read it).
        self.transactions = 0

    async def commit(self, submission: Submission) -> list[Committed]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Committed]] = loop.create_future()
        self._queue.append((submission, done))
        if self._leader is None:
            self._leader = loop.create_task(self._lead(), name="store-group-commit")
        # A caller that goes away does not take its submission back: like a commit
        # already under way, it is committed (and recorded) all the same.
        return await done

    async def drain(self) -> None:
        """Return once every queued submission was committed (or failed)."""
        while self._leader is not None:
            await asyncio.wait([self._leader])

    async def _lead(self) -> None:
        try:
            while self._queue:
                group = self._take()
                try:
                    outcomes = await self._run([s for s, _ in group])
                except BaseException as exc:  # every caller of the group gets it
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                        raise
                    continue
                for (_, done), outcome in zip(group, outcomes, strict=True):
                    if done.done():
                        continue
                    if isinstance(outcome, BaseException):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
        finally:
            self._leader = None
            # Anything still queued (the leader was cancelled): refused, never lost
            # silently.
            for _, done in self._queue:
                if not done.done():
                    done.cancel()
            self._queue.clear()

    def _take(self) -> list[tuple[Submission, asyncio.Future[list[Committed]]]]:
        """The oldest queued submissions, up to ``max_objects`` (at least one)."""
        size = 0
        n = 0
        for submission, _ in self._queue:
            if n and size + submission.size > self._max_objects:
                break
            size += submission.size
            n += 1
        group, self._queue = self._queue[:n], self._queue[n:]
        return group
