"""Peers benchmark: the exchange's ingest next to medallion's and stix2.parse's.

Same run, same objects: the TLP:GREEN indicators bench/ingest.py generates, in bundles
of 1,000, one client each, measured on

1. ``stix2.parse(obj, allow_custom=False)`` on one thread of this process (the first
   objects of the set, as bench/ingest.py's baseline);
2. medallion, the OASIS TAXII 2.1 reference server, with its memory backend, run as a
   subprocess (its ``medallion`` command: Flask on werkzeug's server) on a free port of
   127.0.0.1: each bundle's objects POSTed as a TAXII envelope to a collection's objects
   endpoint, until medallion has answered every POST (it does not validate STIX);
3. the exchange: bench/ingest.py's measure_ingest (SDK submit -> gRPC -> validation ->
   SQLite commit -> relay to the bus), objects/s accepted and published.

Prints each rate with the ratios exchange/medallion and exchange/stix2; never asserts.
medallion is the ``bench`` extra: ``pip install -e '.[bench]'``. Run
``python bench/peers.py --help``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    FULL,
    QUICK,
    Bundle,
    BusSetup,
    CpuMeter,
    CpuUse,
    Delivered,
    IngestResult,
    background_load,
    cpu_model,
    make_bundles,
    measure_ingest,
    measure_parse_baseline,
    progress,
    table,
    tansu_broker,
)
from tests.helpers import free_port  # noqa: E402

BUNDLE_SIZE = 1_000
TAXII = "application/taxii+json;version=2.1"
API_ROOT = "bench"
STARTUP_S = 60.0


@dataclass(frozen=True)
class PeerResult:
    """medallion's ingest: ``objects`` POSTed in ``len(post_s)`` envelopes."""

    objects: int
    seconds: float  # first POST sent -> last answer received
    post_s: Sequence[float]  # per POST, send -> answer
    post_objects: Sequence[int]
    stored: Delivered  # submitted ids missing from its answers / answered twice
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.objects / self.seconds


# -- medallion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Medallion:
    port: int
    pid: int
    collection: str
    warm_up_collection: str
    authorization: str
    version: str

    def objects_path(self, collection: str) -> str:
        return f"/{API_ROOT}/collections/{collection}/objects/"


def medallion_python() -> str:
    """The interpreter that runs medallion: this one, where the bench extra installs it."""
    try:
        metadata.version("medallion")
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "medallion is not installed: run `.venv/bin/pip install -e '.[bench]'` from the"
            " repository root (the benchmark-only extra), then run this again"
        ) from None
    return sys.executable


def _collection(collection_id: str, title: str) -> dict[str, Any]:
    return {
        "id": collection_id,
        "title": title,
        "can_read": True,
        "can_write": True,
        "media_types": ["application/stix+json;version=2.1"],
        "objects": [],
        "manifest": [],
    }


def _memory_data(port: int, collection: str, warm_up: str) -> dict[str, Any]:
    """The memory backend's whole state: one API root, two empty collections."""
    return {
        "/discovery": {
            "title": "bench/peers.py",
            "default": f"http://127.0.0.1:{port}/{API_ROOT}/",
            "api_roots": [f"http://127.0.0.1:{port}/{API_ROOT}/"],
        },
        API_ROOT: {
            "information": {
                "title": "bench",
                "versions": [TAXII],
                "max_content_length": 256 * 1024 * 1024,
            },
            "status": [],
            "collections": [
                _collection(collection, "measured"),
                _collection(warm_up, "warm-up"),
            ],
        },
    }


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    authorization: str,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    headers = {"Accept": TAXII, "Authorization": authorization}
    if body is not None:
        headers["Content-Type"] = TAXII
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop medallion by its process id: SIGTERM, then SIGKILL after 5 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def medallion_server() -> Iterator[Medallion]:
    """medallion with its memory backend on a free port, stopped (by pid) on the way out."""
    python = medallion_python()
    with tempfile.TemporaryDirectory(prefix="bench-medallion-") as tmp:
        port = free_port()
        collection, warm_up = str(uuid.uuid4()), str(uuid.uuid4())
        password = secrets.token_hex(16)
        data = Path(tmp, "data.json")
        data.write_text(json.dumps(_memory_data(port, collection, warm_up)))
        config = Path(tmp, "config.json")
        config.write_text(
            json.dumps(
                {
                    "backend": {
                        "module": "medallion.backends.memory_backend",
                        "module_class": "MemoryBackend",
                        "filename": str(data),
                    },
                    "users": {"bench": password},
                    "taxii": {"max_page_size": 100},
                }
            )
        )
        log_path = Path(tmp, "medallion.log")
        command = [python, "-m", "medallion.scripts.run", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "ERROR", str(config)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            authorization = "Basic " + base64.b64encode(f"bench:{password}".encode()).decode()
            _wait_ready(port, authorization, process, log_path)
            yield Medallion(
                port=port,
                pid=process.pid,
                collection=collection,
                warm_up_collection=warm_up,
                authorization=authorization,
                version=metadata.version("medallion"),
            )
        finally:
            _stop_process(process)


def _wait_ready(
    port: int, authorization: str, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Until medallion answers its discovery endpoint (or has exited: say why)."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"medallion exited ({process.returncode}) at start:\n{log_path.read_text()}"
            )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            status, _ = _request(conn, "GET", "/taxii2/", authorization)
            if status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"medallion did not answer on port {port} in {STARTUP_S:g} s")
        time.sleep(0.1)


def _envelope(item: Bundle) -> bytes:
    """A TAXII 2.1 envelope with the bundle's objects, encoded as the SDK encodes bundles."""
    envelope = {"objects": item["objects"]}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def _post(
    conn: http.client.HTTPConnection, server: Medallion, collection: str, item: Bundle
) -> list[str]:
    """POST one envelope; the ids medallion says it added."""
    status, body = _request(
        conn, "POST", server.objects_path(collection), server.authorization, _envelope(item)
    )
    if status != 202:
        raise RuntimeError(f"medallion answered {status}: {body[:300]!r}")
    answer = json.loads(body)
    return [s["id"] for s in answer.get("successes", [])]


def measure_medallion(bundles: Sequence[Bundle], warm_up: Bundle) -> tuple[PeerResult, str]:
    """POST every bundle to a fresh medallion, one client, one POST at a time."""
    with medallion_server() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        try:
            _post(conn, server, server.warm_up_collection, warm_up)
            submitted = [o["id"] for b in bundles for o in b["objects"]]
            added: list[str] = []
            post_s = []
            meter = CpuMeter()
            start = time.perf_counter()
            for item in bundles:
                sent = time.perf_counter()
                added += _post(conn, server, server.collection, item)
                post_s.append(time.perf_counter() - sent)
            seconds = time.perf_counter() - start
            cpu = meter.stop()
        finally:
            conn.close()
    found = Counter(added)
    stored = Delivered(
        expected=len(submitted),
        lost=sum(1 for i in submitted if found[i] == 0),
        repeated=sum(n - 1 for n in found.values() if n > 1),
    )
    result = PeerResult(
        objects=len(submitted),
        seconds=seconds,
        post_s=post_s,
        post_objects=[len(b["objects"]) for b in bundles],
        stored=stored,
        cpu=cpu,
    )
    return result, server.version


# -- output ------------------------------------------------------------------------------


def versions() -> str:
    names = ("grpcio", "stix2", "medallion", "flask", "werkzeug")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _ratio(exchange: float, other: float) -> str:
    return f"{exchange / other:.2f}x" if other > 0 else "n/a"


def report(
    parse: Sequence[float],
    parse_objects: int,
    medallion: PeerResult | None,
    medallion_version: str,
    exchange: Sequence[IngestResult],
) -> None:
    parse_rate = statistics.median(parse)
    headers = ["system", "objects", "seconds", "objects/s", "exchange/it", "lost/repeated"]
    headers.append("cores ours/all")
    # The exchange's figure in the ratios: the first bus's rate until published.
    best = exchange[0].accepted / exchange[0].published_s if exchange else float("nan")
    rows = [
        [
            "stix2.parse(allow_custom=False), one thread",
            f"{parse_objects:,}",
            f"{parse_objects / parse_rate:.2f}",
            f"{parse_rate:,.0f}",
            _ratio(best, parse_rate),
            "-",
            "-",
        ]
    ]
    if medallion is not None:
        rows.append(
            [
                f"medallion {medallion_version}, memory backend",
                f"{medallion.objects:,}",
                f"{medallion.seconds:.2f}",
                f"{medallion.rate:,.0f}",
                _ratio(best, medallion.rate),
                str(medallion.stored),
                str(medallion.cpu),
            ]
        )
        for label, index in (("  its first POST (empty collection)", 0), ("  its last POST", -1)):
            seconds = medallion.post_s[index]
            objects = medallion.post_objects[index]
            rows.append(
                [
                    label,
                    f"{objects:,}",
                    f"{seconds:.2f}",
                    f"{objects / seconds:,.0f}",
                    _ratio(best, objects / seconds),
                    "",
                    "",
                ]
            )
    for r in exchange:
        answered = r.accepted / r.answered_s
        published = r.accepted / r.published_s
        rows.append(
            [
                f"exchange [{r.bus}], accepted (answered)",
                f"{r.accepted:,}",
                f"{r.answered_s:.2f}",
                f"{answered:,.0f}",
                _ratio(best, answered),
                "",
                str(r.cpu),
            ]
        )
        rows.append(
            [
                f"exchange [{r.bus}], accepted and published",
                f"{r.accepted:,}",
                f"{r.published_s:.2f}",
                f"{published:,.0f}",
                _ratio(best, published),
                str(r.published_ids),
                "",
            ]
        )
    print(table(headers, rows))
    print()
    for r in exchange:
        published = r.accepted / r.published_s
        line = f"exchange [{r.bus}] accepted and published {published:,.0f} objects/s:"
        if medallion is not None:
            line += f" exchange/medallion = {_ratio(published, medallion.rate)}"
            first = medallion.post_objects[0] / medallion.post_s[0]
            line += f" ({_ratio(published, first)} of its first POST);"
        line += f" exchange/stix2 = {_ratio(published, parse_rate)}"
        print(line)
    print("targets (issue 'Ingest at ten times stix2'): >= 4x medallion, >= 10x stix2.parse")


def progress_done(what: str, started: float) -> None:
    progress(f"{what}: {time.perf_counter() - started:.1f} s")


# -- main --------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Prints numbers only; never fails on a timing. Progress goes to stderr.",
    )
    parser.add_argument("--quick", action="store_true", help="4,000 objects instead of 20,000")
    parser.add_argument(
        "--objects", type=int, help="objects per system (a multiple of 1,000; default 20,000)"
    )
    parser.add_argument(
        "--bus",
        choices=("local", "kafka", "both"),
        default="local",
        help="the exchange's bus (kafka starts and stops its own Tansu broker); default local",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    objects = args.objects or max(n for size, n in plan.ingest if size == BUNDLE_SIZE)
    objects = max(BUNDLE_SIZE, objects // BUNDLE_SIZE * BUNDLE_SIZE)
    medallion_python()  # fail now, not after the other measurements, if it is missing
    signal.signal(signal.SIGTERM, _terminate)

    started = time.perf_counter()
    print("Peers benchmark: bench/peers.py" + (" --quick" if args.quick else ""))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"machine: {os.cpu_count()} CPUs ({usable} usable), {cpu_model()}, {platform.system()}")
    print(f"python: {platform.python_implementation()} {platform.python_version()}")
    print(f"versions: {versions()}")
    load = background_load()
    print(f"before start: cores busy {load.machine or 0:.2f} of {os.cpu_count()} (other users)")

    # One set of objects for every system; created_by_ref is the exchange partner's identity.
    identity = f"identity--{uuid.uuid4()}"
    bundles = make_bundles(identity, BUNDLE_SIZE, objects)
    all_objects = [o for b in bundles for o in b["objects"]]
    warm_up = make_bundles(f"identity--{uuid.uuid4()}", 10, 10)[0]
    print(
        f"objects: {objects:,} TLP:GREEN indicators from bench/ingest.py's generator, in"
        f" bundles of {BUNDLE_SIZE:,}, the same objects for every system; one client each,"
        " one request at a time"
    )
    exchange: list[IngestResult] = []
    medallion: PeerResult | None = None
    version = "?"
    try:
        t = time.perf_counter()
        what = f"stix2.parse over the first {plan.baseline_objects:,} objects"
        progress(f"{what} ...")
        parse = measure_parse_baseline(plan.baseline_objects, objects=all_objects)
        progress_done(what, t)

        t = time.perf_counter()
        what = f"medallion: POST {objects:,} objects in envelopes of {BUNDLE_SIZE:,}"
        progress(f"{what} ...")
        medallion, version = measure_medallion(bundles, warm_up)
        progress_done(what, t)

        for name in ["local", "kafka"] if args.bus == "both" else [args.bus]:
            with contextlib.ExitStack() as stack:
                bootstrap = stack.enter_context(tansu_broker()) if name == "kafka" else None
                t = time.perf_counter()
                what = (
                    f"[{name}] exchange: submit {objects:,} objects in bundles of {BUNDLE_SIZE:,}"
                )
                progress(f"{what} ...")
                exchange.append(
                    measure_ingest(
                        BusSetup(name, bootstrap),
                        BUNDLE_SIZE,
                        objects,
                        1,
                        work=[bundles],
                        identity=identity,
                    )
                )
                progress_done(what, t)
    except KeyboardInterrupt:
        progress("interrupted: everything this run started has been stopped")
        return 130
    print()
    report(parse, min(plan.baseline_objects, objects), medallion, version, exchange)
    print(f"\nrun time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
