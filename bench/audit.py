"""Audit log benchmark: how fast entries are recorded, and how long verification takes.

Prints numbers, each with its ratio to a baseline measured in this same process; it
never asserts on timings.

1. Baselines: ``Event.encode`` + RFC 6962 leaf hash of each entry (what appending
   must compute, without a store), and ``hashlib.sha256(0x00 || data)`` over the
   stored bytes of the verified log (the least any verification must do).
2. Append: entries/s through ``SqliteStore.append_audit`` (one durable transaction
   per call, synchronous=FULL) in batches of 1, 100, 1,000 and 10,000.
3. SUBMIT entries: ``commit_objects`` of new indicators in bundles of 1,000 (objects,
   outbox rows and one SUBMIT entry each, one transaction), against the same commit
   with the audit append patched out (this benchmark only): the extra cost per
   object, and what encoding and hashing alone cost.
4. Verify: ``verify_log`` over a log of 1,000,000 entries (built with
   ``append_audit`` in batches of 10,000, a signed checkpoint every 100,000), with the
   public key; the target is at most 10 s.

Run ``python bench/audit.py`` from the repository root (about a minute and a half
on 2 cores; the 1,000,000-entry log takes about 650 MB in a temporary directory),
``--quick`` for a smaller run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from exchange_protocol.merkle import leaf_hash

from exchange import policy
from exchange.audit.entries import Action, AuditQuery, Event, body_digest, submitted
from exchange.audit.log import AuditLog
from exchange.audit.recorder import AuditRecorder
from exchange.audit.signer import Signer
from exchange.audit.verify import verify_log
from exchange.auth import new_token_credential
from exchange.model import (
    Audience,
    ObjectOutcome,
    Partner,
    Rejection,
    StoredObject,
    Tlp,
    ValidObject,
)
from exchange.store import Committed
from exchange.store.sqlite import SqliteStore
from exchange.store.sqlite import _audit as sqlite_audit

SUBMITTER = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
VERIFY_TARGET_S = 10.0


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does (``--quick`` makes everything smaller)."""

    baseline_entries: int
    # (entries per append_audit call, total entries)
    append: tuple[tuple[int, int], ...]
    commit_objects: int
    verify_entries: int
    checkpoint_every: int
    # (subscribers, objects each receives): deliveries recorded
    deliveries: tuple[int, int] = (100, 2_000)


FULL = Plan(
    baseline_entries=100_000,
    append=((1, 1_000), (100, 50_000), (1_000, 100_000), (10_000, 200_000)),
    commit_objects=30_000,
    verify_entries=1_000_000,
    checkpoint_every=100_000,
)
QUICK = Plan(
    baseline_entries=20_000,
    append=((1, 300), (100, 10_000), (1_000, 20_000), (10_000, 40_000)),
    commit_objects=5_000,
    verify_entries=100_000,
    checkpoint_every=20_000,
    deliveries=(100, 500),
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_busy(seconds: float = 1.0) -> float | None:
    """Cores busy on the whole machine over ``seconds`` (other users), from /proc/stat."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split()[1:8]]
        except (OSError, ValueError):
            return None
        return sum(fields) - fields[3] - fields[4], sum(fields)

    before = sample()
    time.sleep(seconds)
    after = sample()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


# -- what is recorded ----------------------------------------------------------------------


def object_id(n: int) -> str:
    return f"indicator--00000000-0000-4000-8000-{n:012d}"


def events(start: int, count: int) -> list[Event]:
    """Entries shaped like the real ones: a submission and deliveries of each object."""
    out = []
    for n in range(start, start + count):
        if n % 4 == 0:
            out.append(
                Event(
                    Action.SUBMIT,
                    "ngo-1",
                    1_760_000_000.0 + n / 1_000,
                    object_id=object_id(n // 4),
                    version="2026-01-01T00:00:00.000Z",
                    digest=hashlib.sha256(n.to_bytes(8, "big")).hexdigest(),
                    owner="ngo-1",
                    detail={"outcome": "accepted"},
                )
            )
        else:
            out.append(
                Event(
                    Action.DELIVER,
                    f"partner-{n % 4}",
                    1_760_000_000.0 + n / 1_000,
                    object_id=object_id(n // 4),
                    version="2026-01-01T00:00:00.000Z",
                    digest=hashlib.sha256((n // 4).to_bytes(8, "big")).hexdigest(),
                    owner="ngo-1",
                    detail={"channel": "subscribe", "cursor": f"v1.{n:x}"},
                )
            )
    return out


def indicators(start: int, count: int) -> list[tuple[ValidObject, Audience]]:
    audience = Audience(Tlp.GREEN, SUBMITTER.partner_id)
    out = []
    for n in range(start, start + count):
        oid = object_id(n)
        body = (
            f'{{"type":"indicator","spec_version":"2.1","id":"{oid}",'
            f'"created":"2026-01-01T00:00:00.000Z","modified":"2026-01-01T00:00:00.000Z",'
            f'"created_by_ref":"{SUBMITTER.identity_id}","pattern_type":"stix",'
            f'"pattern":"[x-phone-number:value = \'+1555{n:07d}\']",'
            f'"valid_from":"2026-01-01T00:00:00Z"}}'
        ).encode()
        obj = ValidObject(
            oid, "indicator", "2026-01-01T00:00:00.000Z", SUBMITTER.identity_id, Tlp.GREEN, body
        )
        out.append((obj, audience))
    return out


# -- measurements ----------------------------------------------------------------------------


def encode_and_hash_rate(count: int) -> float:
    """Entries/s of Event.encode + leaf hash (the chain, no store)."""
    batch = events(0, count)
    started = time.perf_counter()
    previous = bytes(32)
    for index, event in enumerate(batch):
        previous = leaf_hash(event.encode(index, previous))
    return count / (time.perf_counter() - started)


async def open_store(directory: Path, name: str) -> SqliteStore:
    store = SqliteStore(directory / f"{name}.sqlite3")
    await store.open()
    return store


async def append_rate(directory: Path, batch: int, total: int) -> float:
    store = await open_store(directory, f"append-{batch}")
    try:
        batches = [events(n, min(batch, total - n)) for n in range(0, total, batch)]
        started = time.perf_counter()
        for one in batches:
            await store.append_audit(one)
        return total / (time.perf_counter() - started)
    finally:
        await store.close()


@dataclass(frozen=True)
class CommitCost:
    with_audit_us: float  # per object
    without_audit_us: float
    hashing_us: float  # encode + leaf hash of its SUBMIT entry alone


@contextlib.contextmanager
def audit_append_patched_out() -> Iterator[None]:
    """commit_objects without its SUBMIT entries (for this comparison only)."""
    real = sqlite_audit.append_submits

    def skipped(
        conn: sqlite3.Connection,
        submitter_id: str,
        objects: Sequence[tuple[ValidObject, Audience]],
        results: Sequence[Committed],
        rejected: Sequence[Rejection],
        *,
        at: float,
    ) -> list[Committed]:
        return list(results)

    sqlite_audit.append_submits = skipped
    try:
        yield
    finally:
        sqlite_audit.append_submits = real


async def commit_cost(directory: Path, count: int, bundle: int = 1_000) -> CommitCost:
    async def per_object(name: str) -> float:
        store = await open_store(directory, name)
        try:
            await store.add_partner(SUBMITTER, new_token_credential("ngo-1", now=1.0)[0])
            bundles = [indicators(n, min(bundle, count - n)) for n in range(0, count, bundle)]
            started = time.perf_counter()
            for objects in bundles:
                await store.commit_objects(SUBMITTER, objects, time.time(), policy.widen)
            return (time.perf_counter() - started) / count * 1e6
        finally:
            await store.close()

    # Alternate, twice each, and keep the best of each (less noise from the machine).
    with_audit, without = [], []
    for attempt in range(2):
        with_audit.append(await per_object(f"commit-audit-{attempt}"))
        with audit_append_patched_out():
            without.append(await per_object(f"commit-plain-{attempt}"))

    objects = [obj for obj, _ in indicators(0, count)]
    started = time.perf_counter()
    previous = bytes(32)
    for index, obj in enumerate(objects):
        event = submitted("ngo-1", obj, ObjectOutcome.ACCEPTED, 1.0)
        previous = leaf_hash(event.encode(index, previous))
    hashing = (time.perf_counter() - started) / count * 1e6
    return CommitCost(min(with_audit), min(without), hashing)


@dataclass(frozen=True)
class VerifyResult:
    entries: int
    checkpoints: int
    build_s: float
    verify_s: float
    baseline_s: float  # sha256(0x00 || data) over the same bytes, in memory
    intact: bool
    summary: str
    file_mb: float


async def verify_time(directory: Path, entries: int, checkpoint_every: int) -> VerifyResult:
    store = await open_store(directory, "verify")
    signer = Signer.generate()
    log = AuditLog(store, signer, "bench.example")
    try:
        batch = 10_000
        started = time.perf_counter()
        for n in range(0, entries, batch):
            await store.append_audit(events(n, min(batch, entries - n)))
            if (n + batch) % checkpoint_every == 0 or n + batch >= entries:
                await log.checkpoint()
        build = time.perf_counter() - started
        progress(f"  built {entries:,} entries in {build:.1f} s; verifying")

        started = time.perf_counter()
        report = await verify_log(store, signer.public_key_pem)
        verify = time.perf_counter() - started

        datas: list[bytes] = []
        position = 0
        while rows := await store.audit_rows(position, 50_000):
            datas += [r.data for r in rows]
            position = rows[-1].log_index + 1
        sha256 = hashlib.sha256
        started = time.perf_counter()
        for data in datas:
            sha256(b"\x00" + data).digest()
        baseline = time.perf_counter() - started
        del datas
        return VerifyResult(
            entries,
            report.checkpoints_checked,
            build,
            verify,
            baseline,
            report.intact,
            report.summary,
            store.path.stat().st_size / 1e6,
        )
    finally:
        await store.close()


# -- report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryCost:
    deliveries: int
    entries: int
    seconds: float  # noting and appending every delivery, CPU of this process
    bytes: int  # of the entries' canonical bytes


async def delivery_cost(directory: Path, name: str, plan: Plan, *, gathered: bool) -> DeliveryCost:
    """Record ``plan.deliveries`` (subscribers x objects, in messages of 10 objects, as
    live streams send them) with the recorder: gathered into DELIVER entries listing
    the versions, or (the way of earlier releases) one entry per delivery."""
    subscribers, count = plan.deliveries
    audience = Audience(Tlp.GREEN, SUBMITTER.partner_id)
    objects = [
        StoredObject(n, SUBMITTER.partner_id, 1.0, obj, audience)
        for n, (obj, _) in enumerate(indicators(0, count))
    ]
    store = await open_store(directory, name)
    recorder = AuditRecorder(store, delivery_span_s=60.0)
    started = time.process_time()
    at = 1_760_000_000.0
    for n in range(0, count, 10):
        message = objects[n : n + 10]
        for s in range(subscribers):
            recipient = f"partner-{s}"
            if gathered:
                recorder.note_deliveries(recipient, message, at)
            else:
                recorder.note(
                    Event(
                        Action.DELIVER,
                        recipient,
                        at,
                        object_id=o.obj.object_id,
                        version=o.obj.version,
                        digest=body_digest(o.obj.body),
                        owner=o.submitter,
                        detail={"channel": "subscribe"},
                    )
                    for o in message
                )
            if len(recorder._queue) >= 250:  # as the recorder's loop would
                await recorder.flush()
        at += 0.01
    await recorder.flush()
    seconds = time.process_time() - started
    entries = await store.audit_entries(AuditQuery(limit=10**9))
    await store.close()
    return DeliveryCost(
        subscribers * count, len(entries), seconds, sum(len(e.data) for e in entries)
    )


def rate(value: float) -> str:
    return f"{value:>12,.0f}"


async def run(plan: Plan, directory: Path) -> None:
    progress("baseline: encode + leaf hash")
    baseline = encode_and_hash_rate(plan.baseline_entries)
    print()
    print("1. Baseline: Event.encode + leaf hash (SHA-256 of 0x00 || bytes) per entry, the")
    print(f"   chain of {plan.baseline_entries:,} entries in memory, no store:")
    print(f"   {baseline:,.0f} entries/s")

    print()
    print("2. Append: SqliteStore.append_audit, one transaction (synchronous=FULL) per call;")
    print("   ratio = rate / baseline 1.")
    print("   entries/call      entries    entries/s   ratio")
    for batch, total in plan.append:
        progress(f"append {total:,} in batches of {batch:,}")
        appended = await append_rate(directory, batch, total)
        print(f"   {batch:>11,}  {total:>11,} {rate(appended)}   {appended / baseline:5.2f}")

    progress(f"commit_objects: {plan.commit_objects:,} objects, with and without audit")
    cost = await commit_cost(directory, plan.commit_objects)
    extra = cost.with_audit_us - cost.without_audit_us
    print()
    print(f"3. SUBMIT entries: commit_objects of {plan.commit_objects:,} new indicators in bundles")
    print("   of 1,000 (objects + outbox + a SUBMIT entry each, one transaction), per object,")
    print("   best of 2; 'without' patches the audit append out (this benchmark only):")
    print(f"   with audit {cost.with_audit_us:.1f} us, without {cost.without_audit_us:.1f} us:")
    print(
        f"   the SUBMIT entry costs {extra:.1f} us per object"
        f" ({extra / cost.without_audit_us:+.0%} of the commit);"
        f" encoding + hashing it alone: {cost.hashing_us:.1f} us"
        f" (ratio {extra / cost.hashing_us:.1f}x)"
    )

    progress(f"verify: building a log of {plan.verify_entries:,} entries")
    found = await verify_time(directory, plan.verify_entries, plan.checkpoint_every)
    print()
    print(f"4. Verify: verify_log over {found.entries:,} entries ({found.file_mb:,.0f} MB file), a")
    print(f"   checkpoint every {plan.checkpoint_every:,}, signatures checked. Log built with")
    print(
        f"   append_audit in batches of 10,000: {found.build_s:.1f} s"
        f" ({found.entries / found.build_s:,.0f} entries/s)."
    )
    print(
        f"   verify_log: {found.verify_s:.2f} s ({found.entries / found.verify_s:,.0f} entries/s;"
        f" target <= {VERIFY_TARGET_S * found.entries / 1_000_000:g} s)"
    )
    print(
        "   baseline, sha256(0x00 || data) over the same bytes in memory:"
        f" {found.baseline_s:.2f} s; ratio {found.verify_s / found.baseline_s:.1f}x"
    )
    print(f"   {found.summary}")

    subscribers, count = plan.deliveries
    progress(f"deliveries: {subscribers} subscribers x {count:,} objects")
    each = await delivery_cost(directory, "each.sqlite3", plan, gathered=False)
    gathered = await delivery_cost(directory, "gathered.sqlite3", plan, gathered=True)
    print()
    print(f"5. Deliveries: {subscribers} subscribers each receiving {count:,} objects in messages")
    print("   of 10 (AuditRecorder into SQLite, CPU of this process for noting, encoding,")
    print("   hashing and appending); one entry per delivery (earlier releases) against")
    print("   DELIVER entries gathered per recipient and owner (at most 256 versions each):")
    print("   way              entries   deliveries/s   bytes/delivery")
    for label, way in (("one each", each), ("gathered", gathered)):
        print(
            f"   {label:<9} {way.entries:>13,} {rate(way.deliveries / way.seconds)}"
            f"   {way.bytes / way.deliveries:>14,.0f}"
        )
    print(
        f"   ratio gathered/one each: {each.seconds / gathered.seconds:.1f}x the deliveries/s,"
        f" {each.entries / gathered.entries:,.0f}x fewer entries"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller run")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the temporary databases"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    print("Audit benchmark: bench/audit.py" + (" --quick" if args.quick else ""))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.system()}")
    print(
        f"python: {platform.python_implementation()} {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}"
    )
    busy = machine_busy()
    print(f"before start: cores busy {busy or 0:.2f} of {os.cpu_count()} (other users)")
    with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=args.dir) as tmp:
        asyncio.run(run(plan, Path(tmp)))
    print(f"\nrun time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
