"""The Submit pipeline: bundle -> validate -> audience (policy) -> persist -> answer.

Pure of any network code: it takes the authenticated partner and the raw
bundle bytes and returns one result per object. STIX validation is CPU-bound,
so it runs on worker processes, taking turns fairly with other partners'
submissions (exchange.validation); a partner may have only so many bytes of
bundles in progress at once (limits.max_submission_bytes_per_partner), and a
submission keeps its place until the work it started ends, even if its caller
goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
    ValidObject,
)
from exchange.quota import PartnerQuota
from exchange.stix import decode_bundle
from exchange.store import CommitOutcome, Committed, Store, refusal
from exchange.validation import Validator, estimated_cost

__all__ = ["Ingest"]

_T = TypeVar("_T")
# Bundles up to this size are decoded on the event loop (a few milliseconds).
_DECODE_HERE_BYTES = 256 * 1024


class Ingest:
    def __init__(
        self,
        store: Store,
        validator: Validator,
        limits: Limits,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._validator = validator
        self._limits = limits
        self._metrics = metrics or Metrics(process=False)
        self._in_progress = PartnerQuota(
            limits.max_submission_bytes_per_partner,
            setting="limits.max_submission_bytes_per_partner",
            what="bytes of bundles",
            metrics=self._metrics,
        )
        # Decoding holds the interpreter lock (orjson: ~0.5 s for 16 MiB), in a thread
        # or not: large bundles are decoded one at a time, so that the event loop gets
        # its turn between them; small ones at once, so they never wait behind them.
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=True, cancel_futures=True)

    async def submit(
        self, partner: Partner, raw: bytes, request: AudienceRequest | None = None
    ) -> list[ObjectResult]:
        """Validate and store one bundle for the audience ``request`` names.

        Raises InvalidBundle for bundle-level problems, InvalidArgument for an
        audience naming unknown communities or partners (then nothing is stored),
        ResourceExhausted when the partner has too many submissions in progress;
        otherwise one result per object."""
        # Past the partner's limit in bytes: refused at once, before anything is decoded
        # (counted in limit_refusals). It bounds the memory and the cores one partner's
        # concurrent large bundles can take; small ones pass freely.
        with self._in_progress.hold(partner.partner_id, len(raw)):
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
            policy.check_request_size(request, self._limits.max_audience_names)
            communities = [c.name for c in await self._store.list_communities()]
            partners = {p.partner_id: p for p in await self._store.list_partners()}
            policy.check_request(request, partners=partners, communities=communities)
        if len(raw) <= _DECODE_HERE_BYTES:
            objects, costs = self._decode(raw)
        else:
            objects, costs = await _until_done(
                asyncio.get_running_loop().run_in_executor(self._decoder, self._decode, raw)
            )
        checked = await self._validator.validate(
            objects,
            costs,
            partner_id=partner.partner_id,
            submitter_identity=partner.identity_id,
            default_tlp=partner.default_tlp,
            limits=self._limits,
        )
        valid = [c for c in checked if isinstance(c, ValidObject)]
        # One look-up for both: which objects this partner holds already (a later
        # version keeps its audience) and who created what the sightings are of.
        refs = {o.refers_to for o in valid if o.refers_to}
        holders = await self._store.submitters_of({o.object_id for o in valid} | refs)
        creators = await self._sighted_creators(refs, holders)
        results: dict[int, ObjectResult] = {}
        routed: list[tuple[ValidObject, Audience]] = []
        audiences = policy.audiences_for(
            (
                (
                    obj,
                    creators.get(obj.refers_to, ()),
                    # Another partner's copy (of an observable) or object (which the
                    # store refuses) is not an earlier version of this one.
                    partner.partner_id not in holders.get(obj.object_id, ()),
                )
                for obj in valid
            ),
            partner,
            request,
        )
        for obj, audience in zip(valid, audiences, strict=True):
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
        for (obj, asked), done in zip(routed, committed, strict=True):
            results[obj.index] = _result(obj, asked, done)
        return [results[c.index] if isinstance(c, ValidObject) else _rejected(c) for c in checked]

    def _decode(self, raw: bytes) -> tuple[list[Any], list[int]]:
        """The bundle's objects and what each will cost to validate (in a thread)."""
        objects = decode_bundle(raw, self._limits)
        return objects, [estimated_cost(obj) for obj in objects]

    async def _sighted_creators(
        self, refs: set[str], holders: Mapping[str, frozenset[str]]
    ) -> dict[str, list[Partner]]:
        """For each sighted object id in ``refs`` that is held: the partners that
        created it (a sighting travels back to the creator of what it sights)."""
        out: dict[str, list[Partner]] = {}
        for object_id in refs & holders.keys():
            for partner_id in sorted(holders[object_id]):
                creator = await self._store.get_partner(partner_id)
                if creator is not None:
                    out.setdefault(object_id, []).append(creator)
        return out


async def _until_done(work: asyncio.Future[_T]) -> _T:
    """``work``'s result. When the caller goes away meanwhile, the cancellation waits
    for ``work`` to end: a submission keeps its place in the partner's limits for as
    long as its bundle is being worked on, so that cancelling and resubmitting cannot
    pile up work beyond them."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


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
