"""``submit_many``, minus the I/O: cut objects into bundles, add up the answers."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from exchange_client._models import (
    BatchError,
    ObjectResult,
    RejectedObject,
    SubmitProgress,
    SubmitResult,
    SubmitSummary,
)
from exchange_client._objects import make_bundle

__all__ = ["DEFAULT_BATCH_SIZE", "ManySubmission", "ProgressCallback"]

DEFAULT_BATCH_SIZE = 500

ProgressCallback = Callable[[SubmitProgress], object]


def _object_id(obj: Any) -> str:
    value = obj.get("id") if isinstance(obj, Mapping) else getattr(obj, "id", None)
    return value if isinstance(value, str) else ""


class ManySubmission:
    """One ``submit_many`` call: the bundles to send, and the tally of the answers.

    ``bundles()`` is consumed by gRPC as the stream needs requests; ``add()`` is
    called with each batch's result, in order.
    """

    def __init__(
        self,
        objects: Iterable[Any],
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if isinstance(objects, str | bytes | bytearray | Mapping):
            raise TypeError(
                "submit_many takes an iterable of STIX objects (dicts or stix2 objects);"
                " to send one bundle, use submit()"
            )
        self._objects = objects
        self._batch_size = batch_size
        self._on_progress = on_progress
        self.total = len(objects) if isinstance(objects, Sized) else None
        self.objects_sent = 0
        self._batch_ids: list[list[str]] = []
        self._answered = 0
        self._done = 0
        self._accepted: list[str] = []
        self._duplicates: list[str] = []
        self._rejected: list[RejectedObject] = []
        self._errors: list[BatchError] = []
        self._results: list[ObjectResult] = []

    def bundles(self) -> Iterator[dict[str, Any]]:
        iterator = iter(self._objects)
        while chunk := list(itertools.islice(iterator, self._batch_size)):
            self._batch_ids.append([_object_id(o) for o in chunk])
            self.objects_sent += len(chunk)
            yield make_bundle(chunk)

    def add(self, result: SubmitResult) -> SubmitProgress:
        """Count one batch's result and report progress."""
        batch = self._answered
        self._answered += 1
        ids = self._batch_ids[batch] if batch < len(self._batch_ids) else []
        if result.error is not None:
            self._errors.append(BatchError(batch, result.error, [i for i in ids if i]))
            self._done += len(ids)
        else:
            self._done += max(len(result.results), len(ids))
            self._accepted += result.accepted
            self._duplicates += result.duplicates
            self._rejected += result.rejected
            self._results += result.results
        progress = SubmitProgress(
            objects_sent=self.objects_sent,
            objects_done=self._done,
            accepted=len(self._accepted),
            duplicates=len(self._duplicates),
            rejected=len(self._rejected),
            total=self.total,
        )
        if self._on_progress is not None:
            self._on_progress(progress)
        return progress

    def summary(self) -> SubmitSummary:
        return SubmitSummary(
            accepted=list(self._accepted),
            duplicates=list(self._duplicates),
            rejected=list(self._rejected),
            errors=list(self._errors),
            results=list(self._results),
            batches=self._answered,
        )
