"""TAXII benchmark: paged reads and envelope POSTs, against gRPC in the same run.

1. Stores N TLP:GREEN indicators (bundles of 1,000, gRPC Submit through the SDK, in a
   process of its own), then reads them all through TAXII (GET objects, limit=1000,
   following ``next``) from a process of its own: objects/s and page p50/p99, checking
   that each object came exactly once.
2. POSTs M envelopes of 1,000 objects to the inbox, and submits M bundles of the same
   objects (new ids) with gRPC Submit: objects/s of each.
3. With ``--medallion`` (the ``bench`` extra installed): the same M envelopes POSTed to
   medallion, the OASIS TAXII 2.1 reference server (memory backend, bench/peers.py), and
   read back from it with the same ``limit`` (medallion caps pages at 100).

The server runs in this process (tests.helpers.ServerThread, embedded store and bus).
It prints numbers and never fails on a timing. Run ``python bench/taxii.py --help``.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
import requests
from exchange_client import ExchangeClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import _expect, child_process  # noqa: E402
from exchange._memory import collect_less_often  # noqa: E402
from exchange.taxii._collections import INBOX_ID, RECEIVED_ID  # noqa: E402
from tests.helpers import ServerThread, bundle, indicator, settings_for  # noqa: E402

BUNDLE = 1_000
MEDIA = "application/taxii+json;version=2.1"


def _objects(identity: str, start: int, count: int) -> list[dict[str, object]]:
    return [indicator(identity, n=i) for i in range(start, start + count)]


def _submit_process(conn: Connection, target: str, token: str, identity: str, count: int) -> None:
    try:
        with ExchangeClient(target, token, timeout=300) as client:
            accepted = 0
            for start in range(0, count, BUNDLE):
                objs = _objects(identity, start, min(BUNDLE, count - start))
                accepted += len(client.submit(orjson.dumps(bundle(objs))).accepted)
        conn.send(("done", accepted))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def _read_process(conn: Connection, url: str, user: str, token: str, limit: int) -> None:
    try:
        session = requests.Session()
        session.auth = (user, token)
        session.headers["Accept"] = MEDIA
        ids: set[str] = set()
        got = 0
        pages: list[float] = []
        params: dict[str, str] = {"limit": str(limit)}
        start = time.perf_counter()
        while True:
            began = time.perf_counter()
            response = session.get(url, params=params, timeout=60)
            response.raise_for_status()
            body = response.content
            # A page's time ends when its last byte arrived: decoding it is the client's.
            pages.append(time.perf_counter() - began)
            page = orjson.loads(body)
            objects = page.get("objects", [])
            got += len(objects)
            ids.update(o["id"] for o in objects)
            if not page.get("more"):
                break
            params = {"limit": str(limit), "next": page["next"]}
        conn.send(("done", (got, len(ids), time.perf_counter() - start, pages)))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def _medallion(envelopes: list[bytes], limit: int) -> str:
    """POST the envelopes to a fresh medallion, then page through them: its rates."""
    from bench.peers import _request, medallion_server  # noqa: PLC0415 (the bench extra)

    with medallion_server() as peer:
        conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=600)
        try:
            path = peer.objects_path(peer.collection)
            began = time.perf_counter()
            for body in envelopes:
                status, answer = _request(conn, "POST", path, peer.authorization, body)
                if status != 202:
                    raise RuntimeError(f"medallion answered {status}: {answer[:300]!r}")
            post_s = time.perf_counter() - began
            got, query = 0, f"?limit={limit}"
            began = time.perf_counter()
            while True:
                status, answer = _request(conn, "GET", path + query, peer.authorization)
                if status != 200:
                    raise RuntimeError(f"medallion answered {status}: {answer[:300]!r}")
                page = orjson.loads(answer)
                got += len(page.get("objects", []))
                if not page.get("more"):
                    break
                query = f"?limit={limit}&next={page['next']}"
            read_s = time.perf_counter() - began
        finally:
            conn.close()
    total = len(envelopes) * BUNDLE
    return (
        f"medallion {peer.version} (memory backend): POST {total / post_s:,.0f} objects/s;"
        f" paged read of {got:,} objects {got / read_s:,.0f} objects/s"
    )


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000, help="objects stored and read")
    parser.add_argument("--limit", type=int, default=1000, help="TAXII page size")
    parser.add_argument(
        "--envelopes", type=int, default=10, help="1,000-object POSTs (and Submits)"
    )
    parser.add_argument(
        "--medallion", action="store_true", help="the same POSTs and reads on medallion"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-taxii-") as tmp:
        settings = settings_for(Path(tmp), validation_workers=0, taxii={"listen": "127.0.0.1:0"})
        server = ServerThread(settings).start()
        collect_less_often()  # as `exchange serve` does once started
        try:
            assert server.server is not None and server.server.taxii is not None
            base = f"http://127.0.0.1:{server.server.taxii.port}/exchange/collections"
            submitter = server.add_partner("bench-taxii-submitter")
            reader = server.add_partner("bench-taxii-reader")
            began = time.perf_counter()
            job = (server.target, submitter.token, submitter.identity, args.objects)
            with child_process(_submit_process, *job) as conn:
                accepted = _expect(conn, "done", 3600)
            server.wait_published(600)
            # The audit log's tree over what storing appended, built before the timed read
            # (as bench/catchup.py does): a checkpoint over 100,000 new entries is work of
            # the storing, not of the pages.
            server.run(server.server.audit_log.checkpoint(), 600)  # type: ignore[union-attr]
            print(f"stored {accepted:,} objects in {time.perf_counter() - began:.1f} s (gRPC)")

            url = f"{base}/{RECEIVED_ID}/objects/"
            read = (url, reader.partner_id, reader.token, args.limit)
            with child_process(_read_process, *read) as conn:
                got, distinct, seconds, pages = _expect(conn, "done", 3600)
            print(
                f"TAXII paged read, limit={args.limit}: {got:,} objects ({distinct:,} distinct)"
                f" in {seconds:.2f} s = {got / seconds:,.0f} objects/s;"
                f" {len(pages)} pages, p50 {_quantile(pages, 0.5) * 1000:.1f} ms,"
                f" p99 {_quantile(pages, 0.99) * 1000:.1f} ms"
            )
            print(
                "  slowest pages (index, ms):",
                sorted(((round(t * 1000), i) for i, t in enumerate(pages)), reverse=True)[:6],
            )

            session = requests.Session()
            session.auth = (submitter.partner_id, submitter.token)
            headers = {"Accept": MEDIA, "Content-Type": MEDIA}
            envelopes = [
                orjson.dumps({"objects": _objects(submitter.identity, 10**7 + i * BUNDLE, BUNDLE)})
                for i in range(args.envelopes)
            ]
            began = time.perf_counter()
            for body in envelopes:
                status = session.post(
                    f"{base}/{INBOX_ID}/objects/", data=body, headers=headers, timeout=300
                )
                status.raise_for_status()
                assert status.json()["success_count"] == BUNDLE, status.text[:300]
            taxii_s = time.perf_counter() - began
            bundles = [
                orjson.dumps(bundle(_objects(submitter.identity, 2 * 10**7 + i * BUNDLE, BUNDLE)))
                for i in range(args.envelopes)
            ]
            with ExchangeClient(server.target, submitter.token, timeout=300) as client:
                began = time.perf_counter()
                for raw in bundles:
                    assert len(client.submit(raw).accepted) == BUNDLE
                grpc_s = time.perf_counter() - began
            total = args.envelopes * BUNDLE
            print(
                f"ingest of {args.envelopes} x {BUNDLE:,} objects: TAXII POST"
                f" {total / taxii_s:,.0f} objects/s, gRPC Submit {total / grpc_s:,.0f} objects/s"
                f" (TAXII/gRPC {grpc_s / taxii_s:.2f})"
            )
            if args.medallion:
                print(_medallion(envelopes, args.limit))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
