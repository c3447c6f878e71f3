"""The Submit pipeline: bundle -> validate -> audience (policy) -> persist -> answer.

Pure of any network code: it takes the authenticated partner and the raw
bundle bytes and returns one result per object. STIX validation is CPU-bound
(the stix2 library), so it runs off the event loop, on several processes for
large bundles when more than one core is available.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from exchange import policy
from exchange.config import Limits
from exchange.errors import InvalidArgument
from exchange.metrics import Metrics
from exchange.model import (
    Audience,
    AudienceRequest,
    ObjectOutcome,
    ObjectResult,
    Partner,
    Rejection,
    Tlp,
    ValidObject,
)
from exchange.stix import decode_bundle, validate_objects
from exchange.store import CommitOutcome, Committed, Store, refusal

__all__ = ["Ingest", "Validator"]

# A worker gets at least this many objects of a bundle: smaller pieces cost more
# in hand-off than they save. Small bundles still go to a worker process (as one
# piece), which keeps the server's own process free for gRPC under load.
_MIN_CHUNK = 8


class Validator:
    """Runs ``validate_objects`` off the event loop: on ``workers`` processes (0: one
    per core), a large bundle split evenly over them; with one worker, in a thread."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._executor: Executor
        if self.workers == 1:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="validate")
        else:
            self._executor = ProcessPoolExecutor(
                self.workers,
                # spawn, not fork: forking a process that runs gRPC threads is unsafe.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
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
        *,
        submitter_identity: str,
        default_tlp: Tlp,
        limits: Limits,
    ) -> list[ValidObject | Rejection]:
        loop = asyncio.get_running_loop()
        pieces = min(self.workers, math.ceil(len(objects) / _MIN_CHUNK)) or 1
        size = math.ceil(len(objects) / pieces) or 1
        chunks = [
            loop.run_in_executor(
                self._executor,
                _validate_chunk,
                list(objects[start : start + size]),
                start,
                submitter_identity,
                default_tlp,
                limits,
            )
            for start in range(0, len(objects), size)
        ]
        results: list[ValidObject | Rejection] = []
        for part in await asyncio.gather(*chunks):
            results.extend(part)
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _noop() -> None:
    return None


def _ignore_interrupts() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the server process
    # decides when workers stop, so an interrupt must not kill a validation.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _validate_chunk(
    objects: list[Any], start: int, identity: str, tlp: Tlp, limits: Limits
) -> list[ValidObject | Rejection]:
    return validate_objects(
        objects, start_index=start, submitter_identity=identity, default_tlp=tlp, limits=limits
    )


class Ingest:
    def __init__(
        self,
        store: Store,
        validator: Validator,
        limits: Limits,
        on_commit: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._validator = validator
        self._limits = limits
        self._on_commit = on_commit
        self._metrics = metrics or Metrics(process=False)

    async def submit(
        self, partner: Partner, raw: bytes, request: AudienceRequest | None = None
    ) -> list[ObjectResult]:
        """Validate and store one bundle for the audience ``request`` names.

        Raises InvalidBundle for bundle-level problems and InvalidArgument for an
        audience naming unknown communities or partners (then nothing is stored);
        otherwise one result per object."""
        try:
            with self._metrics.submissions_in_progress.track_inprogress():
                results = await self._submit(partner, raw, request)
        except InvalidArgument:
            self._metrics.submissions.labels("refused").inc()
            raise
        except Exception:
            self._metrics.submissions.labels("failed").inc()
            raise
        self._metrics.submitted(results)
        return results

    async def _submit(
        self, partner: Partner, raw: bytes, request: AudienceRequest | None
    ) -> list[ObjectResult]:
        request = request or AudienceRequest()
        if request.communities or request.recipients:
            communities = [c.name for c in await self._store.list_communities()]
            partners = {p.partner_id: p for p in await self._store.list_partners()}
            policy.check_request(request, partners=partners, communities=communities)
        objects = await asyncio.to_thread(decode_bundle, raw, self._limits)
        checked = await self._validator.validate(
            objects,
            submitter_identity=partner.identity_id,
            default_tlp=partner.default_tlp,
            limits=self._limits,
        )
        valid = [c for c in checked if isinstance(c, ValidObject)]
        # One look-up for both: which objects are held already (a later version keeps
        # its audience) and who created what the sightings among them are of.
        refs = {o.refers_to for o in valid if o.refers_to}
        held = await self._store.submitters_of({o.object_id for o in valid} | refs)
        creators = await self._sighted_creators(refs, held)
        results: dict[int, ObjectResult] = {}
        routed: list[tuple[ValidObject, Audience]] = []
        for obj in valid:
            audience = policy.audience_for(
                obj,
                partner,
                request,
                implied_recipients=creators.get(obj.refers_to, ()),
                first_version=obj.object_id not in held,
            )
            if isinstance(audience, Rejection):
                results[obj.index] = _rejected(audience)
            else:
                routed.append((obj, audience))
        # Refused by validation or by the audience rules: recorded by the store with
        # the accepted ones, in one transaction.
        rejected = [c for c in checked if isinstance(c, Rejection)]
        rejected += [r.rejection for r in results.values() if r.rejection is not None]
        committed = await self._store.commit_objects(
            partner, routed, time.time(), policy.widen, rejected
        )
        if any(c.outcome is CommitOutcome.INSERTED for c in committed):
            self._on_commit()
        for (obj, asked), done in zip(routed, committed, strict=True):
            results[obj.index] = _result(obj, asked, done)
        return [results[c.index] if isinstance(c, ValidObject) else _rejected(c) for c in checked]

    async def _sighted_creators(
        self, refs: set[str], held: Mapping[str, str]
    ) -> dict[str, list[Partner]]:
        """For each sighted object id in ``refs`` that is held: the partner that
        created it (a sighting travels back to the creator of its indicator)."""
        out: dict[str, list[Partner]] = {}
        for object_id in refs & held.keys():
            creator = await self._store.get_partner(held[object_id])
            if creator is not None:
                out[object_id] = [creator]
        return out


def _rejected(rejection: Rejection) -> ObjectResult:
    return ObjectResult(
        index=rejection.index,
        object_id=rejection.object_id,
        version=rejection.version,
        outcome=ObjectOutcome.REJECTED,
        rejection=rejection,
    )


def _result(obj: ValidObject, asked: Audience, committed: Committed) -> ObjectResult:
    outcome = committed.outcome
    if outcome is CommitOutcome.INSERTED:
        kept = committed.audience or asked
        return ObjectResult(
            obj.index,
            obj.object_id,
            obj.version,
            ObjectOutcome.ACCEPTED,
            notice=policy.kept_notice(asked, kept),
            receipt=committed.receipt,
        )
    if outcome is CommitOutcome.DUPLICATE:
        return ObjectResult(obj.index, obj.object_id, obj.version, ObjectOutcome.DUPLICATE)
    return _rejected(refusal(obj, outcome))
