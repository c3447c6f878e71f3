"""Store benchmark: committed objects per second, SQLite against PostgreSQL.

``commit_objects`` is where every accepted object becomes durable (object version,
outbox row and SUBMIT audit entry in one transaction). This measures it alone, on
the embedded SQLite store (the baseline, run first in the same process) and on a
PostgreSQL database (a throwaway cluster this script starts and stops, as the
tests do, with durable commits: ``fsync`` and ``synchronous_commit`` on), for
bundles of 1, 100 and 1,000 objects, from one writer and from two stores at once
(two replicas' pools on one database: their commits take turns on the audit
chain's head). It prints numbers and ratios; it never asserts on timings.

    python bench/store.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exchange import policy  # noqa: E402
from exchange.auth import new_token_credential  # noqa: E402
from exchange.model import Audience, Partner, PartnerKind, Tlp, ValidObject  # noqa: E402
from exchange.store import Store  # noqa: E402
from exchange.store.postgres import PostgresStore  # noqa: E402
from exchange.store.sqlite import SqliteStore  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

BUNDLES = (1, 100, 1000)
# One-object bundles from this many concurrent committers (different partners).
COMMITTERS = 16


def submitter() -> Partner:
    pid = f"bench-{uuid.uuid4().hex[:6]}"
    return Partner(pid, "Bench NGO", f"identity--{uuid.uuid4()}", PartnerKind.NGO)


def objects(partner: Partner, count: int) -> list[tuple[ValidObject, Audience]]:
    out = []
    audience = Audience(Tlp.GREEN, partner.partner_id, frozenset(), frozenset(), frozenset())
    for _ in range(count):
        oid = f"indicator--{uuid.uuid4()}"
        body = (
            f'{{"type":"indicator","id":"{oid}","modified":"2026-01-01T00:00:00.000Z",'
            f'"pattern":"[phone-number:value = \'+66 2 555 0100\']","pattern_type":"stix"}}'
        ).encode()
        obj = ValidObject(
            oid, "indicator", "2026-01-01T00:00:00.000Z", partner.identity_id, Tlp.GREEN, body
        )
        out.append((obj, audience))
    return out


async def rate(stores: list[Store], bundle: int, seconds: float) -> float:
    """Objects committed per second by ``len(stores)`` writers at once."""
    partners = []
    for store in stores[:1]:
        partner = submitter()
        credential, _ = new_token_credential(partner.partner_id)
        await store.add_partner(partner, credential)
        partners.append(partner)
    partner = partners[0]
    committed = 0
    deadline = time.perf_counter() + seconds

    async def writer(store: Store) -> None:
        nonlocal committed
        while time.perf_counter() < deadline:
            await store.commit_objects(partner, objects(partner, bundle), time.time(), policy.widen)
            committed += bundle

    start = time.perf_counter()
    await asyncio.gather(*(writer(s) for s in stores))
    return committed / (time.perf_counter() - start)


async def concurrent_rate(stores: list[Store], committers: int, seconds: float) -> Rate:
    """Objects committed per second by ``committers`` callers at once (spread over
    ``stores``), each committing one-object bundles of its own partner, and the
    objects per store transaction."""
    partners = []
    for _ in range(committers):
        partner = submitter()
        credential, _ = new_token_credential(partner.partner_id)
        # Registered once: the stores of a run share one database.
        await stores[0].add_partner(partner, credential)
        partners.append(partner)
    committed = 0
    transactions = sum(getattr(s, "commit_transactions", 0) for s in stores)
    deadline = time.perf_counter() + seconds

    async def writer(store: Store, partner: Partner) -> None:
        nonlocal committed
        while time.perf_counter() < deadline:
            await store.commit_objects(partner, objects(partner, 1), time.time(), policy.widen)
            committed += 1

    start = time.perf_counter()
    await asyncio.gather(*(writer(stores[n % len(stores)], p) for n, p in enumerate(partners)))
    elapsed = time.perf_counter() - start
    transactions = sum(getattr(s, "commit_transactions", 0) for s in stores) - transactions
    return Rate(committed / elapsed, committed / max(transactions, 1))


class Rate(NamedTuple):
    per_second: float
    per_transaction: float  # objects per store transaction


async def measure(make: Callable[[], Store], writers: int, seconds: float) -> dict[str, Rate]:
    stores = [make() for _ in range(writers)]
    for store in stores:
        await store.open()
    try:
        out: dict[str, Rate] = {}
        for b in BUNDLES:
            before = sum(getattr(s, "commit_transactions", 0) for s in stores)
            per_second = await rate(stores, b, seconds)
            used = sum(getattr(s, "commit_transactions", 0) for s in stores) - before
            out[str(b)] = Rate(per_second, per_second * seconds / max(used, 1))
        out[CONCURRENT] = await concurrent_rate(stores, COMMITTERS, seconds)
        return out
    finally:
        for store in stores:
            await store.close()


CONCURRENT = f"1 x{COMMITTERS}"
COLUMNS = [*(str(b) for b in BUNDLES), CONCURRENT]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument(
        "--sqlite-only", action="store_true", help="skip PostgreSQL (no cluster started)"
    )
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, Rate]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exchange.sqlite3"
        sqlite = asyncio.run(measure(lambda: SqliteStore(path), 1, args.seconds))
        rows.append(("sqlite, 1 writer (baseline)", sqlite))
    if not args.sqlite_only:
        with PostgresServer(durable=True) as server:
            url = server.create_database()
            rows.append(
                (
                    "postgresql, 1 store",
                    asyncio.run(measure(lambda: PostgresStore(url), 1, args.seconds)),
                )
            )
            url = server.create_database()
            rows.append(
                (
                    "postgresql, 2 stores at once",
                    asyncio.run(measure(lambda: PostgresStore(url), 2, args.seconds)),
                )
            )
    # The concurrent column's ratio is to SQLite's single writer of one-object bundles:
    # what group commit gains over one fsync per object.
    base = {c: sqlite[c].per_second for c in COLUMNS}
    base[CONCURRENT] = sqlite["1"].per_second
    names = {c: f"bundle {c}" for c in COLUMNS}
    names[CONCURRENT] = f"bundle 1, {COMMITTERS} committers"
    print(f"{'objects committed per second':30}" + "".join(f"{names[c]:>26}" for c in COLUMNS))
    for name, values in rows:
        cells = "".join(
            f"{values[c].per_second:>18,.0f} ({values[c].per_second / base[c]:5.2f}x)"
            for c in COLUMNS
        )
        print(f"{name:30}{cells}")
    print("\nobjects per store transaction")
    for name, values in rows:
        print(f"{name:30}" + "".join(f"{values[c].per_transaction:>26,.1f}" for c in COLUMNS))
    print(
        f"ratios: to the SQLite single writer of the same bundle size; the {COMMITTERS}"
        " committers column to SQLite's single writer of one-object bundles"
    )


if __name__ == "__main__":
    main()
