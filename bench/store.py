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


async def measure(make: Callable[[], Store], writers: int, seconds: float) -> dict[int, float]:
    stores = [make() for _ in range(writers)]
    for store in stores:
        await store.open()
    try:
        return {b: await rate(stores, b, seconds) for b in BUNDLES}
    finally:
        for store in stores:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    rows: list[tuple[str, dict[int, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exchange.sqlite3"
        sqlite = asyncio.run(measure(lambda: SqliteStore(path), 1, args.seconds))
        rows.append(("sqlite, 1 writer (baseline)", sqlite))
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
    print(f"{'objects committed per second':34}" + "".join(f"{f'bundle {b}':>22}" for b in BUNDLES))
    for name, values in rows:
        cells = "".join(f"{values[b]:>12,.0f} ({values[b] / sqlite[b]:4.2f}x)" for b in BUNDLES)
        print(f"{name:34}{cells}")


if __name__ == "__main__":
    main()
