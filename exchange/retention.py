"""Retention: copies of objects past their maximum age, or indicators past their
``valid_until``, are erased by the same path as a manual erasure
(``ObjectStore.erase_object``: bodies removed, tombstones and notices, an ERASE
audit entry with reason ``retention`` or ``expired``). docs/retention.md.

``plan`` says what is due at ``now`` and why; ``run`` erases exactly what ``plan``
says, at most ``settings.batch`` copies (the next run goes on with the rest);
``RetentionSchedule`` runs it every ``interval_s`` in one process among those
sharing the store (the ``retention`` lease). No gRPC here: ``exchange serve`` runs
the schedule, ``exchange retention plan|run`` the rest.

What is due, for each copy (an SDO's one copy, or one partner's copy of an
observable), judged on its latest version by acceptance (which holds the copy's
cumulative audience): its age is ``now`` minus when that version was accepted (so a
new version starts the count again), and each rule that applies gives a time the
copy is due at:

- ``retention.max_age_days`` for the latest version's TLP marking;
- ``retention.communities`` for each community its audience names;
- its ``valid_until``, for an indicator, with ``expire_valid_until`` (reason expired).

The copy is due once the earliest of those times has come (the strictest rule
wins; on a tie, expiry: it is the submitter's own date), and that rule is named.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from exchange._tasks import supervise
from exchange.audit.entries import OPERATOR
from exchange.config import RetentionSettings
from exchange.errors import ExchangeError
from exchange.metrics import Metrics
from exchange.model import EraseReason, Erasure, Tlp
from exchange.store import RetentionCandidate, RetentionQuery, RetentionStore, Store

__all__ = [
    "ACTOR",
    "LEASE",
    "Due",
    "RetentionRun",
    "RetentionSchedule",
    "due_copies",
    "plan",
    "run",
    "stix_time",
]

log = logging.getLogger(__name__)

# Who erases: the operator, whose settings these are (the audit entry's actor; its
# reason, retention or expired, says it was the schedule and not a request).
ACTOR = OPERATOR
# The lease one process among those sharing the store holds to run the schedule.
LEASE = "retention"
DAY_S = 86_400.0
# Candidates read per query.
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Due:
    """One copy due for erasure at ``now``, and why."""

    object_id: str
    copy_of: str  # the copy's partner (its submitter)
    object_type: str
    reason: EraseReason  # RETENTION or EXPIRED
    rule: str  # the rule that applied, e.g. "tlp red: 90 days"
    accepted_at: float  # when its latest version was accepted
    age_s: float  # now - accepted_at
    due_at: float  # when the rule made it due
    seq: int  # its latest version's sequence number (the order of a plan)

    def record(self) -> dict[str, object]:
        """As a JSON line of ``exchange retention plan --json`` (no content)."""
        return {
            "object_id": self.object_id,
            "copy_of": self.copy_of,
            "type": self.object_type,
            "reason": self.reason.value,
            "rule": self.rule,
            "accepted_at": iso(self.accepted_at),
            "age_days": round(self.age_s / DAY_S, 2),
            "due_at": iso(self.due_at),
        }


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def stix_time(text: str) -> float | None:
    """A STIX timestamp (``YYYY-MM-DDTHH:MM:SS[.fraction]Z``, any number of fraction
    digits) as epoch seconds; None if it is not one."""
    if len(text) < 20 or not text.endswith("Z"):
        return None
    whole, dot, fraction = text[:-1].partition(".")
    if dot and not (fraction.isascii() and fraction.isdigit()):
        return None
    try:
        at = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return at.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


@dataclass(frozen=True, slots=True)
class _Rules:
    """The settings at ``now``: each rule's cut-off (accepted at or before it: due)."""

    now: float
    tlp_before: dict[Tlp, tuple[float, int]]  # level -> (cut-off, days)
    community_before: dict[str, tuple[float, int]]
    expire: bool

    @classmethod
    def at(cls, settings: RetentionSettings, now: float) -> _Rules:
        return cls(
            now,
            {t: (now - d * DAY_S, d) for t, d in settings.max_ages().items()},
            {c: (now - d * DAY_S, d) for c, d in settings.communities.items()},
            settings.expire_valid_until,
        )

    def query(self) -> RetentionQuery:
        return RetentionQuery(
            tlp_accepted_before={t: cut for t, (cut, _) in self.tlp_before.items()},
            community_accepted_before={c: cut for c, (cut, _) in self.community_before.items()},
            # At second precision: a superset of what expired (``due`` compares exactly).
            valid_until_before=(
                datetime.fromtimestamp(self.now, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                if self.expire
                else None
            ),
            limit=_PAGE,
        )

    def due(self, c: RetentionCandidate) -> Due | None:
        """Whether ``c`` is due, by the strictest rule that applies."""
        # (due at, expiry first on a tie, rule, reason)
        found: list[tuple[float, int, str, EraseReason]] = []
        if c.tlp in self.tlp_before:
            cut, days = self.tlp_before[c.tlp]
            if c.accepted_at <= cut:
                found.append(
                    (
                        c.accepted_at + days * DAY_S,
                        1,
                        f"tlp {c.tlp.value}: {days} days",
                        EraseReason.RETENTION,
                    )
                )
        for community in sorted(c.audience.communities & self.community_before.keys()):
            cut, days = self.community_before[community]
            if c.accepted_at <= cut:
                found.append(
                    (
                        c.accepted_at + days * DAY_S,
                        1,
                        f"community {community}: {days} days",
                        EraseReason.RETENTION,
                    )
                )
        if self.expire and c.object_type == "indicator" and c.valid_until is not None:
            until = stix_time(c.valid_until)
            if until is not None and until <= self.now:
                found.append((until, 0, f"valid_until {c.valid_until}", EraseReason.EXPIRED))
        if not found:
            return None
        due_at, _, rule, reason = min(found)
        return Due(
            object_id=c.object_id,
            copy_of=c.submitter,
            object_type=c.object_type,
            reason=reason,
            rule=rule,
            accepted_at=c.accepted_at,
            age_s=self.now - c.accepted_at,
            due_at=due_at,
            seq=c.seq,
        )


async def due_copies(
    store: RetentionStore, settings: RetentionSettings, now: float
) -> AsyncIterator[Due]:
    """Every copy due at ``now``, by its latest version's sequence number (the oldest
    first, mostly)."""
    rules = _Rules.at(settings, now)
    query = rules.query()
    while True:
        page = await store.retention_candidates(query)
        for candidate in page:
            due = rules.due(candidate)
            if due is not None:
                yield due
        if len(page) < query.limit:
            return
        query = replace(query, after_seq=page[-1].seq)


async def plan(
    store: RetentionStore, settings: RetentionSettings, now: float, limit: int | None = None
) -> list[Due]:
    """What is due at ``now`` (the first ``limit`` of it): what ``run`` would erase."""
    out: list[Due] = []
    if limit is not None and limit <= 0:
        return out
    async for due in due_copies(store, settings, now):
        out.append(due)
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass(slots=True)
class RetentionRun:
    """What one run did: the copies it found due (at most ``batch``), those it erased
    (a copy erased meanwhile by someone else, or given a new version, is skipped), and
    the erasures the store made."""

    now: float
    due: list[Due] = field(default_factory=list)
    erased: list[Due] = field(default_factory=list)
    erasures: list[Erasure] = field(default_factory=list)
    more: bool = False  # more was due than one batch

    def counts(self) -> dict[str, int]:
        return {
            reason.value: sum(1 for d in self.erased if d.reason is reason)
            for reason in (EraseReason.RETENTION, EraseReason.EXPIRED)
        }


async def _still_due(store: RetentionStore, rules: _Rules, due: Due) -> bool:
    """Whether ``due``'s copy still is due, as planned: no new version since (it
    would start the count again), not erased meanwhile."""
    query = replace(rules.query(), after_seq=due.seq - 1, limit=1)
    found = await store.retention_candidates(query)
    return bool(found) and found[0].seq == due.seq and rules.due(found[0]) is not None


async def run(
    store: Store,
    settings: RetentionSettings,
    now: float,
    *,
    limit: int | None = None,
    planned: Sequence[Due] | None = None,
    on_erased: Callable[[list[Erasure]], None] | None = None,
) -> RetentionRun:
    """Erase what ``plan`` says is due at ``now``, at most ``limit`` (default
    ``settings.batch``) copies, each in its own transaction, as the operator with the
    rule's reason. ``planned``: a plan made earlier at ``now`` to carry out instead
    (its first ``limit``); each copy is checked again right before it is erased, and
    one given a new version (or erased) since is skipped. ``on_erased`` is called once
    with every erasure made (also when the run fails part-way: with those made until
    then)."""
    batch = settings.batch if limit is None else limit
    result = RetentionRun(now)
    if planned is None:
        result.due = await plan(store, settings, now, batch + 1)
    else:
        result.due = list(planned[: batch + 1])
    if len(result.due) > batch:
        result.due.pop()
        result.more = True
    rules = _Rules.at(settings, now)
    try:
        for due in result.due:
            # Checked again right before: the plan may be a batch old.
            if not await _still_due(store, rules, due):
                continue
            # latest_seq: a version accepted since the check above keeps the copy.
            made = await store.erase_object(
                due.object_id,
                by=ACTOR,
                reason=due.reason,
                at=now,
                copy_of=due.copy_of,
                latest_seq=due.seq,
            )
            if made:
                result.erased.append(due)
                result.erasures.extend(made)
    finally:
        if on_erased is not None and result.erasures:
            on_erased(list(result.erasures))
    return result


class RetentionSchedule:
    """Runs retention every ``interval_s`` while this process holds the ``retention``
    lease (one process at a time among those sharing the store): one log line per
    run, counts in metrics (never an id nor any content)."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        *,
        metrics: Metrics | None = None,
        on_erased: Callable[[list[Erasure]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics or Metrics(process=False)
        self._on_erased = on_erased
        self._clock = clock
        self.runs = 0  # runs made by this process (tests wait on it)
        self.erased = 0

    @property
    def enabled(self) -> bool:
        """Whether any rule is set (else nothing can ever be due)."""
        s = self._settings
        return bool(s.max_age_days or s.communities or s.expire_valid_until)

    async def run(self) -> None:
        """Run until cancelled; a failed run is logged and tried again (backing off)."""
        await supervise(
            self._step,
            self._failed,
            first_delay_s=min(self._settings.interval_s, 60.0),
            max_delay_s=max(self._settings.interval_s, 60.0),
            backs_off=lambda exc: isinstance(exc, ExchangeError),
        )

    async def _step(self) -> None:
        if await self._store.hold_lease(LEASE):
            await self.run_once()
        await asyncio.sleep(self._settings.interval_s)

    async def run_once(self) -> RetentionRun:
        started = time.monotonic()
        try:
            done = await run(
                self._store, self._settings, self._clock(), on_erased=self._erasures_made
            )
        except Exception:  # a cancellation (shutdown) is no failure
            self._metrics.retention_runs.labels("failed").inc()
            raise
        self.runs += 1
        self._metrics.retention_runs.labels("done").inc()
        counts = done.counts()
        log.info(
            "retention: erased %d %s (%d past their maximum age, %d expired) in %.1f s%s",
            len(done.erased),
            "copy" if len(done.erased) == 1 else "copies",
            counts[EraseReason.RETENTION.value],
            counts[EraseReason.EXPIRED.value],
            time.monotonic() - started,
            f"; more is due, the next run (in {self._settings.interval_s:g} s) goes on"
            if done.more
            else "",
        )
        return done

    def _erasures_made(self, erasures: list[Erasure]) -> None:
        self.erased += len(erasures)
        for erasure in erasures:
            self._metrics.retention_erased.labels(erasure.reason.value).inc()
        if self._on_erased is not None:
            self._on_erased(erasures)

    async def _failed(self, exc: Exception, delay: float) -> None:
        if isinstance(exc, ExchangeError):
            log.warning("retention: a run failed (%s); retrying in %.0f s", exc, delay)
        else:
            log.error("retention: a run failed; retrying in %.0f s", delay, exc_info=exc)
