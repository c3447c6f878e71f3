"""Catch-up benchmark: how fast subscribers read everything from the beginning.

Stores N TLP:GREEN indicators (bundles of 1,000, submitted through the SDK by a
process of its own), then reads them back from the beginning and prints objects/s,
each with its ratio to the baselines of the same run:

1. Baselines: the bus read alone (a bus reader over the subscriber's topics, in the
   server's process, 5,000 records per read), the same with every record's envelope
   decoded (``exchange._tail.decode``, what a stream's private reader does per
   record), and a raw grpc.aio Subscribe stream (no SDK: the protobuf messages, one
   field read per delivery) from a process of its own.
2. One SDK subscriber (``ExchangeClient.subscribe(from_beginning=True)``, the
   blocking client), in a process of its own: iterating the deliveries (reading
   ``object_id``), and iterating with ``delivery.object`` (the JSON decoded) too.
3. K SDK subscribers at once (``AsyncExchangeClient``, each a partner of its own with
   its own connection, all in one process): the time until every one has read
   everything, against K times the one subscriber's time.

Every subscriber checks what it got: each stored object once (lost, repeated). The
server runs in this process (``tests.helpers.ServerThread``); "server cores" is this
process's CPU during the read (the measuring thread is idle meanwhile), "client
cores" the reading process's. It prints numbers and never fails on a timing.

``--data DIR`` keeps the data directory as it was once the objects were stored, and
later runs with the same ``--objects`` read a fresh copy of it (local bus only; storing
1,000,000 takes minutes).
Run ``python bench/catchup.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import orjson
from exchange_client import AsyncExchangeClient, ExchangeClient
from exchange_client._config import _channel_options
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb.exchange_pb2_grpc import ExchangeServiceStub

from exchange import policy
from exchange._tail import decode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    BusSetup,
    _expect,
    background_load,
    child_process,
    cpu_model,
    server_settings,
    table,
    tansu_broker,
    versions,
)
from tests.helpers import ServerThread, bundle, indicator  # noqa: E402

BUNDLE = 1_000
# Subscriber partners registered (one per concurrent subscriber, at most).
MAX_SUBSCRIBERS = 100
# Where --data keeps what it stored: the tag of the object ids, the tokens.
MANIFEST = "catchup.json"


def _object_id(tag: str, i: int) -> str:
    # The subscriber reads the sequence number back from the id's last 12 digits.
    return f"indicator--{tag}-0000-4000-8000-{i:012x}"


# -- storing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What a child process (submitting or reading) is to do."""

    target: str
    tokens: list[str]
    tag: str
    count: int
    mode: str = ""  # reading: "grpc", "sdk", "sdk-object" or "sdk-async"
    identity: str = ""  # submitting: the submitter's STIX identity


def _submit_process(conn: Connection, job: _Job) -> None:
    """Submit ``job.count`` indicators in bundles of BUNDLE, one bundle at a time, each
    encoded just before it is sent (1,000,000 objects do not fit in memory as dicts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        accepted = 0
        with ExchangeClient(job.target, job.tokens[0], timeout=120) as client:
            for start in range(0, job.count, BUNDLE):
                objects = [
                    indicator(job.identity, n=i, object_id=_object_id(job.tag, i))
                    for i in range(start, min(start + BUNDLE, job.count))
                ]
                accepted += len(client.submit(orjson.dumps(bundle(objects))).accepted)
        conn.send(("done", accepted))
    except Exception as exc:
        conn.send(("error", repr(exc)))


@dataclass(frozen=True)
class Stored:
    tag: str
    count: int
    tokens: list[str]  # the subscribers'
    store_s: float | None  # None: reused


def store(server: ServerThread, count: int) -> Stored:
    tag = uuid.uuid4().hex[:8]
    submitter = server.add_partner("bench-catchup-submitter")
    tokens = [server.add_partner(f"bench-catchup-{i}").token for i in range(MAX_SUBSCRIBERS)]
    start = time.perf_counter()
    job = _Job(server.target, [submitter.token], tag, count, identity=submitter.identity)
    with child_process(_submit_process, job) as conn:
        accepted = _expect(conn, "done", 3600)
    server.wait_published(600)
    took = time.perf_counter() - start
    if accepted != count:
        raise SystemExit(f"only {accepted:,} of {count:,} objects were accepted")
    return Stored(tag, count, tokens, took)


# -- the bus alone ---------------------------------------------------------------------


async def _read_bus(server: ServerThread, token: str, count: int, decoded: bool) -> int:
    assert server.server is not None
    srv = server.server
    caller = await srv.auth.authenticate((("authorization", f"Bearer {token}"),), None)
    names = policy.subscription_topics(caller.partner)
    await srv.bus.ensure_topics(names)
    tps = [(t, p) for t in names for p in await srv.bus.partitions(t)]
    reader = await srv.bus.open_reader(dict.fromkeys(tps), prefetch_bytes=2 * 1024 * 1024)
    read = 0
    try:
        # Up to the stored count: waiting for a read to come back empty would be timed too.
        while read < count and (records := await reader.read(5_000, 5.0)):
            read += len(records)
            if decoded:
                for r in records:
                    decode(r)
    finally:
        await reader.close()
    return read


@dataclass(frozen=True)
class Reading:
    what: str
    subscribers: int
    objects: int  # per subscriber
    seconds: float  # until the last subscriber had everything
    lost: int
    repeated: int
    server_cores: float
    client_cores: float | None
    # The server's time in the garbage collector during the read.
    gc_s: float = 0.0
    # After the read: how long the audit log took to append the deliveries still queued.
    audit_drain_s: float = 0.0

    @property
    def rate(self) -> float:
        """objects/s per subscriber (the slowest one's)."""
        return self.objects / self.seconds


def measure_bus(server: ServerThread, stored: Stored, decoded: bool) -> Reading:
    cpu, wall, gc_s = time.process_time(), time.perf_counter(), GC.seconds
    read = server.run(_read_bus(server, stored.tokens[0], stored.count, decoded), 3600)
    seconds = time.perf_counter() - wall
    what = "bus read + envelope decode" if decoded else "bus read"
    return Reading(
        what,
        1,
        read,
        seconds,
        max(0, stored.count - read),
        max(0, read - stored.count),
        (time.process_time() - cpu) / seconds,
        None,
        GC.seconds - gc_s,
    )


class GcClock:
    """Seconds this process spent in the garbage collector (all threads; gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0
        gc.callbacks.append(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began


GC = GcClock()


# -- subscribers, in a process of their own ---------------------------------------------


class _Seen:
    """Which stored objects one subscriber got, and how often."""

    __slots__ = ("count", "got", "repeated", "seen", "tag")

    def __init__(self, tag: str, count: int) -> None:
        self.tag = f"indicator--{tag}-"
        self.count = count
        self.seen = bytearray(count)
        self.got = 0
        self.repeated = 0

    def add(self, object_id: str) -> bool:
        """Note one delivery; True once every object was received."""
        if object_id.startswith(self.tag):
            i = int(object_id[-12:], 16)
            if self.seen[i]:
                self.repeated += 1
            else:
                self.seen[i] = 1
                self.got += 1
        return self.got >= self.count


async def _raw_grpc(target: str, token: str, seen: _Seen) -> None:
    options = _channel_options([("grpc.use_local_subchannel_pool", 1)])
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = ExchangeServiceStub(channel).Subscribe(
            pb.SubscribeRequest(from_beginning=True),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        async for response in call:
            done = False
            for delivery in response.deliveries:
                done = seen.add(delivery.object_id)
            if done:
                call.cancel()
                return


def _sdk_sync(target: str, token: str, seen: _Seen, decode_object: bool) -> None:
    with (
        ExchangeClient(target, token, timeout=None) as client,
        client.subscribe(from_beginning=True) as subscription,
    ):
        for delivery in subscription:
            if decode_object:
                delivery.object  # noqa: B018 - the JSON decode is what is measured
            if seen.add(delivery.object_id):
                return


async def _sdk_async(target: str, token: str, seen: _Seen) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with (
        AsyncExchangeClient(target, token, timeout=None, options=options) as client,
        client.subscribe(from_beginning=True) as subscription,
    ):
        async for delivery in subscription:
            if seen.add(delivery.object_id):
                return


def _reader_process(conn: Connection, job: _Job) -> None:
    """Read everything with ``job.mode`` for each token at once; report (seconds,
    [(lost, repeated)], cores)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    target, mode, tokens = job.target, job.mode, job.tokens
    try:
        seens = [_Seen(job.tag, job.count) for _ in tokens]
        conn.send(("ready", None))
        conn.recv()
        cpu, wall = time.process_time(), time.perf_counter()
        if mode == "grpc":
            asyncio.run(_raw_grpc(target, tokens[0], seens[0]))
        elif mode in {"sdk", "sdk-object"}:
            _sdk_sync(target, tokens[0], seens[0], mode == "sdk-object")
        else:

            async def everyone() -> None:
                await asyncio.gather(
                    *(_sdk_async(target, t, s) for t, s in zip(tokens, seens, strict=True))
                )

            asyncio.run(everyone())
        seconds = time.perf_counter() - wall
        cores = (time.process_time() - cpu) / seconds
        conn.send(("done", (seconds, [(s.count - s.got, s.repeated) for s in seens], cores)))
    except Exception as exc:
        conn.send(("error", repr(exc)))


def measure_readers(server: ServerThread, stored: Stored, what: str, mode: str, k: int) -> Reading:
    job = _Job(server.target, stored.tokens[:k], stored.tag, stored.count, mode=mode)
    with child_process(_reader_process, job) as conn:
        _expect(conn, "ready", 120)
        cpu, gc_s = time.process_time(), GC.seconds
        conn.send("go")
        seconds, checks, client = _expect(conn, "done", 7200)
        server_cpu, gc_s = time.process_time() - cpu, GC.seconds - gc_s
    # Outside the timing, so that the next reading does not share the server with it.
    drain = time.perf_counter()
    assert server.server is not None
    server.run(server.server.recorder.flush(), 3600)
    return Reading(
        what,
        k,
        stored.count,
        seconds,
        sum(lost for lost, _ in checks),
        sum(rep for _, rep in checks),
        server_cpu / seconds,
        client,
        gc_s,
        time.perf_counter() - drain,
    )


# -- output and main ---------------------------------------------------------------------


def report(bus: str, stored: Stored, rows: Sequence[Reading]) -> str:
    raw = next((r for r in rows if r.what == "raw grpc.aio Subscribe"), None)
    one = next((r for r in rows if r.what == "SDK subscriber" and r.subscribers == 1), None)
    lines = [
        f"\n{bus} bus, {stored.count:,} objects"
        + (
            f" (stored in {stored.store_s:.0f} s, {stored.count / stored.store_s:,.0f}/s)"
            if stored.store_s
            else " (reused)"
        )
    ]
    out = []
    for r in rows:
        vs_raw = f"{r.rate / raw.rate:.2f}x" if raw is not None else "-"
        vs_one = "-"
        if one is not None and r.subscribers > 1:
            vs_one = f"{r.seconds / one.seconds:.1f}x"
        out.append(
            [
                r.what,
                str(r.subscribers),
                f"{r.seconds:.1f}",
                f"{r.rate:,.0f}",
                f"{r.rate * r.subscribers:,.0f}",
                vs_raw,
                vs_one,
                f"{r.lost}/{r.repeated}",
                f"{r.server_cores:.2f}",
                "-" if r.client_cores is None else f"{r.client_cores:.2f}",
                f"{r.gc_s:.1f}",
                f"{r.audit_drain_s:.1f}",
            ]
        )
    lines.append(
        table(
            [
                "read",
                "subs",
                "s",
                "objects/s each",
                "objects/s all",
                "vs raw gRPC",
                "time vs one",
                "lost/rep",
                "server cores",
                "client cores",
                "server GC s",
                "audit drain s",
            ],
            out,
        )
    )
    return "\n".join(lines)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _noted(rows: list[Reading], reading: Reading) -> None:
    rows.append(reading)
    progress(
        f"  {reading.rate:,.0f} objects/s each in {reading.seconds:.1f} s"
        f" (GC {reading.gc_s:.1f} s), lost/repeated {reading.lost}/{reading.repeated}"
    )


def _stop(server: ServerThread) -> None:
    # The audit log may still be writing the deliveries' entries: give it time.
    if server.server is not None:
        server.run(server.server.stop(grace_s=1.0), 1800)
        server.server = None
    server.stop()


def _started(data: Path, bus: BusSetup, args: argparse.Namespace) -> ServerThread:
    server = ServerThread(server_settings(data, bus))
    server.start()
    assert server.server is not None and server.server.audit_log is not None
    # The audit log's tree over what the data already holds, built before any timing.
    server.run(server.server.audit_log.checkpoint(), 600)
    if not args.default_gc:
        # As `exchange serve` does once started (imported here: --default-gc also
        # measures a checkout from before it existed).
        from exchange._memory import collect_less_often  # noqa: PLC0415

        collect_less_often()
    return server


def run(bus: BusSetup, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as tmp:
        data = Path(tmp) / "data"
        template = Path(args.data) if args.data is not None and bus.name == "local" else None
        stored: Stored | None = None
        if template is not None and (template / MANIFEST).exists():
            saved = json.loads((template / MANIFEST).read_text())
            if saved["count"] != args.objects:
                raise SystemExit(
                    f"{template} holds {saved['count']:,} objects, not {args.objects:,}:"
                    " use another --data"
                )
            # A fresh copy each run: the deliveries of earlier runs (audit entries) would
            # weigh on this one.
            progress(f"{bus.name}: copying the {args.objects:,} objects stored in {template}")
            shutil.copytree(template, data)
            stored = Stored(saved["tag"], args.objects, saved["tokens"], None)
        server = _started(data, bus, args)
        try:
            if stored is None:
                progress(f"{bus.name}: storing {args.objects:,} objects")
                stored = store(server, args.objects)
                if template is not None:
                    _stop(server)
                    shutil.copytree(data, template, dirs_exist_ok=True)
                    (template / MANIFEST).write_text(
                        json.dumps(
                            {"tag": stored.tag, "count": stored.count, "tokens": stored.tokens}
                        )
                    )
                    server = _started(data, bus, args)
            rows = readings(server, stored, bus, args)
            # Before the server stops (which waits for the audit log's writes).
            print(report(bus.name, stored, rows), flush=True)
        finally:
            _stop(server)


def readings(
    server: ServerThread, stored: Stored, bus: BusSetup, args: argparse.Namespace
) -> list[Reading]:
    rows: list[Reading] = []
    if not args.no_baselines:
        for decoded in (False, True):
            progress(f"{bus.name}: bus read{' + decode' if decoded else ''}")
            _noted(rows, measure_bus(server, stored, decoded))
        progress(f"{bus.name}: raw grpc.aio subscriber")
        _noted(rows, measure_readers(server, stored, "raw grpc.aio Subscribe", "grpc", 1))
    progress(f"{bus.name}: one SDK subscriber")
    _noted(rows, measure_readers(server, stored, "SDK subscriber", "sdk", 1))
    if not args.no_baselines:
        progress(f"{bus.name}: one SDK subscriber, with delivery.object")
        _noted(rows, measure_readers(server, stored, "SDK subscriber + .object", "sdk-object", 1))
    for k in args.subscribers:
        progress(f"{bus.name}: {k} SDK subscribers at once")
        _noted(rows, measure_readers(server, stored, "SDK subscribers (async)", "sdk-async", k))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument(
        "--subscribers",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[10],
        help="comma-separated counts of concurrent subscribers (default 10; '' for none)",
    )
    parser.add_argument("--bus", choices=("local", "kafka", "both"), default="local")
    parser.add_argument("--data", help="keep (and reuse) the local bus's data directory here")
    parser.add_argument("--no-baselines", action="store_true", help="only the SDK subscribers")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="leave the garbage collector as Python sets it (exchange serve tunes it)",
    )
    args = parser.parse_args(argv)
    if any(k < 1 or k > MAX_SUBSCRIBERS for k in args.subscribers):
        parser.error(f"--subscribers: 1 to {MAX_SUBSCRIBERS}")
    print(f"machine: {cpu_model()}, {versions()}")
    print(f"busy before start (cores ours/all): {background_load()}")
    if args.bus in {"local", "both"}:
        run(BusSetup("local"), args)
    if args.bus in {"kafka", "both"}:
        with tansu_broker() as bootstrap:
            run(BusSetup("kafka", bootstrap), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
