"""STIX validation, shared fairly between partners.

Most objects take the validator's fast path (``exchange.stix.fast_validate``: tens of
microseconds, and it only ever accepts); the rest take the full ``stix2`` path, which is
CPU-bound (~2,000 objects/s per core, and a costly pattern takes tens of milliseconds)
and says what is wrong. So:

- a small bundle (at most ``_HERE_MAX_OBJECTS`` objects and ``_HERE_MAX_COST`` of
  estimated work) is tried on the fast path right here, on the event loop: no hop to
  another process, about a millisecond of the loop's time at most;
- a larger one is tried on the fast path by the worker processes (one per core), in
  large chunks (``_FAST_CHUNK_*``: a few milliseconds of a worker each);
- what the fast path could not decide goes to the full path on the workers, in small
  chunks by an estimate of their cost (``_CHUNK_*``).

Every chunk waits in one queue per partner; whenever a worker is free it takes the
next chunk of the next partner in turn. One partner's 10,000-object bundle therefore
delays another partner's submission by at most the chunks already running (a few
milliseconds, or ~30 ms of the full path), never by the whole bundle.

Workers die with the server: each one watches its parent and exits when the parent is
gone (a ``kill -9`` of the server leaves no orphan burning a core).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from exchange.config import Limits
from exchange.errors import Unavailable
from exchange.metrics import Metrics
from exchange.model import Rejection, Tlp, ValidObject
from exchange.stix import fast_validate, validate_objects

__all__ = ["Validator", "chunk_by_cost", "estimated_cost"]

log = logging.getLogger(__name__)

Results = list[ValidObject | Rejection]
# What a worker sends back: one answer per object (None: the fast path could not decide).
_Answers = list[ValidObject | Rejection | None]

# A chunk is cut at about this much estimated work, in units of ~0.1 ms of one core.
# Measured here with stix2: a plain indicator ~0.5 ms; each JSON object inside an
# object ~0.2 ms (external_references, kill_chain_phases); each other value ~1 µs;
# a STIX pattern ~8 µs per character.
_CHUNK_COST = 300
_MAX_CHUNK_OBJECTS = 64
_BASE_COST = 4
_NESTED_OBJECT_COST = 2
_SCALARS_PER_UNIT = 100
_PATTERN_CHARS_PER_UNIT = 12
# How often a worker looks whether its parent (the server) is still there.
_PARENT_CHECK_S = 0.5
# A bundle this small is tried on the fast path in the server process (~30 µs an
# indicator: at most about a millisecond of the event loop per submission).
_HERE_MAX_OBJECTS = 32
_HERE_MAX_COST = 256
# Chunks of the fast pass on the workers: the fast path costs ~1/20 of the estimate
# (made for stix2), so this is ~2-5 ms of a worker, and few hand-overs per bundle.
_FAST_CHUNK_COST = 4000
_FAST_CHUNK_OBJECTS = 256


def estimated_cost(obj: Any) -> int:
    """The rough work of validating ``obj``, in units of ~0.1 ms. One pass over its
    JSON (run in a thread with the bundle's decoding, before any validation)."""
    if not isinstance(obj, dict | list):
        return _BASE_COST
    nested = scalars = pattern = 0
    stack = [obj]
    while stack:
        node = stack.pop()
        values: Iterable[Any] = node
        if isinstance(node, dict):
            nested += 1
            values = node.values()
        for value in values:
            if isinstance(value, dict | list):
                stack.append(value)
            else:
                scalars += 1
    if isinstance(obj, dict) and isinstance(obj.get("pattern"), str):
        pattern = len(obj["pattern"])
    return (
        _BASE_COST
        + _NESTED_OBJECT_COST * max(0, nested - 1)
        + scalars // _SCALARS_PER_UNIT
        + pattern // _PATTERN_CHARS_PER_UNIT
    )


def chunk_by_cost(
    costs: Sequence[int], most: int = _CHUNK_COST, most_objects: int = _MAX_CHUNK_OBJECTS
) -> list[tuple[int, int]]:
    """(start, end) slices of objects whose ``costs`` are given, each about ``most``
    of work (one costly object alone) and at most ``most_objects`` objects."""
    slices: list[tuple[int, int]] = []
    start = total = 0
    for index, cost in enumerate(costs):
        if index > start and (total + cost > most or index - start >= most_objects):
            slices.append((start, index))
            start, total = index, 0
        total += cost
    if start < len(costs):
        slices.append((start, len(costs)))
    return slices


@dataclass(eq=False)
class _Chunk:
    """Objects ``objects`` of one submission, at bundle indexes ``indexes``, for
    ``work`` (``_fast_pass`` or ``_full_path``) on a worker."""

    work: Callable[[list[Any], list[int], str, Tlp, Limits], _Answers]
    objects: list[Any]
    indexes: list[int]
    identity: str
    default_tlp: Tlp
    limits: Limits
    done: asyncio.Future[_Answers] = field(repr=False)


class Validator:
    """Small bundles on the fast path here; the rest with ``validate_objects`` on
    ``workers`` processes (0: one per core; 1: a thread), chunks taken from the
    partners' queues in turn."""

    def __init__(self, workers: int = 0, metrics: Metrics | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._metrics = metrics or Metrics(process=False)
        self._executor = self._new_executor()
        # Partner id -> its chunks waiting, in submission order; the partners with
        # work waiting, in the order they get their next turn.
        self._waiting: dict[str, deque[_Chunk]] = {}
        self._turns: deque[str] = deque()
        self._running = 0
        # Counters, for tests and operators.
        self.chunks_run = 0
        self.pool_restarts = 0

    def _new_executor(self) -> Executor:
        if self.workers == 1:
            return ThreadPoolExecutor(1, thread_name_prefix="validate")
        return ProcessPoolExecutor(
            self.workers,
            # spawn, not fork: forking a process that runs gRPC threads is unsafe.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_started,
            initargs=(os.getpid(),),
        )

    async def warm_up(self) -> None:
        """Start the worker processes now rather than on the first submission."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, _noop) for _ in range(self.workers))
        )

    async def validate(
        self,
        objects: Sequence[Any],
        costs: Sequence[int],
        *,
        partner_id: str,
        submitter_identity: str,
        default_tlp: Tlp,
        limits: Limits,
    ) -> Results:
        """One result per object, in order. ``costs`` are the objects' estimated costs
        (``estimated_cost``). The chunks of this bundle queue behind ``partner_id``'s
        earlier ones, and take turns with other partners' chunks."""
        results: _Answers
        job = (partner_id, submitter_identity, default_tlp, limits)
        if len(objects) <= _HERE_MAX_OBJECTS and sum(costs) <= _HERE_MAX_COST:
            results = [
                _fast_or_none(obj, index, submitter_identity, default_tlp, limits)
                for index, obj in enumerate(objects)
            ]
        else:
            fast_slices = chunk_by_cost(costs, _FAST_CHUNK_COST, _FAST_CHUNK_OBJECTS)
            results = await self._on_workers(
                job, objects, [list(range(start, end)) for start, end in fast_slices], _fast_pass
            )
        undecided = [index for index, result in enumerate(results) if result is None]
        self._metrics.validated_objects.labels("fast").inc(len(objects) - len(undecided))
        self._metrics.validated_objects.labels("full").inc(len(undecided))
        if undecided:
            full_slices = chunk_by_cost([costs[index] for index in undecided])
            full = await self._on_workers(
                job, objects, [undecided[start:end] for start, end in full_slices], _full_path
            )
            for index in undecided:
                results[index] = full[index]
        return [r for r in results if r is not None]

    async def _on_workers(
        self,
        job: tuple[str, str, Tlp, Limits],
        objects: Sequence[Any],
        groups: list[list[int]],
        work: Callable[[list[Any], list[int], str, Tlp, Limits], _Answers],
    ) -> _Answers:
        """``work`` on each group of ``objects`` (given by their indexes), in turn with
        other partners' chunks; one answer per object of ``objects`` (None for those in
        no group)."""
        partner_id, identity, default_tlp, limits = job
        loop = asyncio.get_running_loop()
        chunks = [
            _Chunk(
                work,
                [objects[index] for index in indexes],
                indexes,
                identity,
                default_tlp,
                limits,
                loop.create_future(),
            )
            for indexes in groups
        ]
        answers: _Answers = [None] * len(objects)
        if not chunks:
            return answers
        queue = self._waiting.get(partner_id)
        if queue is None:
            queue = self._waiting[partner_id] = deque()
            self._turns.append(partner_id)
        queue.extend(chunks)
        self._dispatch()
        try:
            parts = await asyncio.gather(*(c.done for c in chunks))
        except BaseException:
            # Cancelled (the caller went away) or failed: its chunks still waiting are
            # dropped, objects and all; those running end on their own (at most one
            # per worker: a few ms of the fast path, ~30 ms of the full one).
            for chunk in chunks:
                chunk.done.cancel()
            self._drop_cancelled(partner_id)
            raise
        for chunk, part in zip(chunks, parts, strict=True):
            for index, answer in zip(chunk.indexes, part, strict=True):
                answers[index] = answer
        return answers

    @property
    def chunks_waiting(self) -> int:
        """Chunks queued for a worker, all partners together."""
        return sum(len(queue) for queue in self._waiting.values())

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- scheduling ------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start chunks while a worker is free: the next partner's oldest chunk."""
        while self._running < self.workers and self._turns:
            partner_id = self._turns.popleft()
            queue = self._waiting[partner_id]
            chunk = queue.popleft()
            if queue:
                self._turns.append(partner_id)
            else:
                del self._waiting[partner_id]
            if chunk.done.done():  # its submission was cancelled
                continue
            self._start(chunk)

    def _drop_cancelled(self, partner_id: str) -> None:
        queue = self._waiting.get(partner_id)
        if queue is None:
            return
        kept = deque(c for c in queue if not c.done.done())
        if kept:
            self._waiting[partner_id] = kept
        else:
            del self._waiting[partner_id]
            self._turns.remove(partner_id)

    def _start(self, chunk: _Chunk) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            running = loop.run_in_executor(
                executor,
                chunk.work,
                chunk.objects,
                chunk.indexes,
                chunk.identity,
                chunk.default_tlp,
                chunk.limits,
            )
        except (BrokenProcessPool, RuntimeError) as exc:
            self._fail(chunk, exc, executor)
            return
        self._running += 1
        self.chunks_run += 1
        running.add_done_callback(lambda done: self._finished(chunk, done, executor))

    def _finished(
        self, chunk: _Chunk, running: asyncio.Future[_Answers], executor: Executor
    ) -> None:
        self._running -= 1
        if running.cancelled():
            chunk.done.cancel()
        elif (exc := running.exception()) is not None:
            self._fail(chunk, exc, executor)
        elif not chunk.done.done():
            chunk.done.set_result(running.result())
        self._dispatch()

    def _fail(self, chunk: _Chunk, exc: BaseException, executor: Executor) -> None:
        if isinstance(exc, BrokenProcessPool):
            if executor is self._executor:
                # A worker died (killed by the system, out of memory): start a new pool,
                # so that one lost worker does not stop validation for everyone.
                log.error("validation: a worker process died (%s); starting new workers", exc)
                self.pool_restarts += 1
                self._executor = self._new_executor()
                executor.shutdown(wait=False, cancel_futures=True)
            exc = Unavailable("validating the bundle failed (a worker stopped); submit it again")
        if not chunk.done.done():
            chunk.done.set_exception(exc)


def _noop() -> None:
    return None


def _worker_started(parent_pid: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the server process
    # decides when workers stop, so an interrupt must not kill a validation.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="watch-parent", daemon=True
    ).start()


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the server is gone (killed with -9 it cannot tell us); a new
    parent (init, a subreaper) means ours died."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_CHECK_S)
    os._exit(1)


def _fast_or_none(
    obj: Any, index: int, identity: str, tlp: Tlp, limits: Limits
) -> ValidObject | None:
    try:
        return fast_validate(obj, index, identity, tlp, limits)
    except Exception as exc:  # noqa: BLE001 - never expected; the full path then decides
        # The kind of error only: its message could quote the (confidential) object.
        log.error("validation: the fast path failed (%s); the full path decides", type(exc))
        return None


def _fast_pass(
    objects: list[Any], indexes: list[int], identity: str, tlp: Tlp, limits: Limits
) -> _Answers:
    """On a worker: the fast path's answer for each object (None: not decided)."""
    return [
        _fast_or_none(obj, index, identity, tlp, limits)
        for obj, index in zip(objects, indexes, strict=True)
    ]


def _full_path(
    objects: list[Any], indexes: list[int], identity: str, tlp: Tlp, limits: Limits
) -> _Answers:
    """On a worker: the full validation of each object."""
    return [
        validate_objects([obj], start_index=index, submitter_identity=identity,
                         default_tlp=tlp, limits=limits)[0]
        for obj, index in zip(objects, indexes, strict=True)
    ]  # fmt: skip
