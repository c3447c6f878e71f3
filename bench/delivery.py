"""Delivery benchmark: what one Subscribe stream pays to send the records it was given.

Every live stream takes the same records from the shared tail (exchange._tail); what
it then does per record, and per message, is paid once per stream: 100 streams at
1,000 objects/s are 100,000 deliveries/s. Each figure is the best of several rounds
(other work on the machine inflates it less), with its ratio to the way the exchange
did it before (commit 4d319fe), measured in the same run:

1. Encoding a batch of N deliveries (N = 1, 10, 100; generated indicators): before,
   ``subscribe_response`` built a protobuf message per stream and gRPC's serializer
   (``SerializeToString``) encoded it; now ``subscribe_response_bytes`` joins each
   record's shared delivery bytes with the stream's cursors. The shared bytes are
   encoded by the first stream that sends a record: shown apart, once per record.
2. The other per-delivery work of a stream (exchange.subscriptions): the cursor after
   each delivery (``StreamPosition.cursor``) when 100 streams deliver the same records
   (before, each encoded its changed piece; now the first does, the others look it up),
   the policy and filter test (``_wanted``; before, ``policy.delivers_from`` took the
   first subscribed topic with a generator), and the whole selection of a batch's
   deliveries from tail entries (the loop of ``Subscriptions._stream``, copied here),
   by a stream after others took the same records (before, ``Delivery`` was a frozen
   dataclass).
3. gRPC's write path: a grpc.aio server in a process of its own writes messages with
   ``context.write`` to 100 streams read by this process. Its CPU (all its threads,
   the kernel's share included) per message: before = a message built per stream and
   serialised by the method's serializer (cursor pieces encoded by every stream); now
   = the shared bytes joined per stream and passed through (cursor pieces shared);
   prebuilt = the same bytes every time (gRPC's write alone). Before and now build
   each stream's deliveries and cursors as a stream does.

Run ``python bench/delivery.py`` from the repository root (about 2 minutes;
``--quick``, about 1). It prints numbers and never fails on a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from itertools import count
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import orjson
from exchange_protocol.pb import exchange_pb2 as pb

from exchange import _subscription_request, policy
from exchange._subscription_request import StreamPosition, SubscriptionRequest
from exchange._tail import Entry, decode
from exchange.bus import ReadRecord
from exchange.envelope import to_records
from exchange.model import Audience, Partner, StoredObject, Tlp, ValidObject
from exchange.services._deliveries import subscribe_response_bytes
from exchange.services.exchange import subscribe_response
from exchange.subscriptions import Batch, Delivery, _wanted

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import indicator  # noqa: E402

BATCH_SIZES = (1, 10, 100)
STREAMS = 100
SUBMITTER = "bench-submitter"
IDENTITY = "identity--5f3c9a0e-7e1d-4b39-9a35-0a6f6a2b7c11"
GREEN = ("green", 0)


def records(how_many: int, start: int = 0) -> list[Entry]:
    """Generated TLP:GREEN indicators as the tail holds them: through the relay's
    envelope onto the green topic, read back and decoded."""
    entries = []
    for n in range(start, start + how_many):
        doc = indicator(IDENTITY, n=n)
        stored = StoredObject(
            seq=n,
            submitter=SUBMITTER,
            accepted_at=time.time(),
            obj=ValidObject(
                object_id=doc["id"],
                object_type="indicator",
                version=doc["modified"],
                created_by_ref=IDENTITY,
                tlp=Tlp.GREEN,
                body=orjson.dumps(doc),
                labels=tuple(doc["labels"]),
            ),
            audience=Audience(tlp=Tlp.GREEN, submitter=SUBMITTER),
        )
        (record, *_) = to_records(stored, ["green"])
        read = ReadRecord("green", 0, n, record.key, record.value, record.headers)
        entries.append(decode(read))
    return entries


def stored_of(entries: Iterable[Entry]) -> list[StoredObject]:
    return [s for _, _, s in entries if isinstance(s, StoredObject)]


def partner(n: int) -> Partner:
    return Partner(partner_id=f"bench-{n}", name=f"Bench {n}", identity_id=f"identity--{n}")


def position_of(p: Partner) -> StreamPosition:
    """A stream's position over the partner's topics (one partition each, as the
    embedded bus has)."""
    return StreamPosition({(t, 0): 0 for t in policy.subscription_topics(p)}, {})


def stream_batch(position: StreamPosition, stored: Sequence[StoredObject], first: int) -> Batch:
    """The batch a stream at ``position`` sends for ``stored`` (green offsets from
    ``first`` on): a delivery and a cursor per record, and the batch's cursor."""
    deliveries = []
    for n, record in enumerate(stored, first):
        position.offsets[GREEN] = n + 1
        position.seqs[GREEN] = n
        position.moved.add(GREEN)
        deliveries.append(Delivery(record, position.cursor()))
    return Batch(deliveries, position.cursor())


def best(run: Callable[[], object], number: int, rounds: int) -> float:
    """The fastest round's seconds per call."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - started) / number)
    return min(times)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f}"


def ratio(now: float, before: float) -> str:
    return f"{now / before:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "   " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# -- 1. encoding -------------------------------------------------------------------------


def encoding(rounds: int) -> list[list[str]]:
    rows = []
    # Warm: the first encoding in a process pays for more than its records.
    subscribe_response_bytes(stream_batch(position_of(partner(0)), stored_of(records(1)), 0))
    for size in BATCH_SIZES:
        stored = stored_of(records(size, start=size * 1000))
        per_stream = [stream_batch(position_of(partner(s)), stored, 0) for s in range(STREAMS)]
        turn = count()

        started = time.perf_counter()
        first = subscribe_response_bytes(per_stream[0])
        cold = time.perf_counter() - started

        def before(batches: list[Batch] = per_stream, turn: Iterator[int] = turn) -> bytes:
            return subscribe_response(batches[next(turn) % STREAMS]).SerializeToString()

        def now(batches: list[Batch] = per_stream, turn: Iterator[int] = turn) -> bytes:
            return subscribe_response_bytes(batches[next(turn) % STREAMS])

        number = max(20, 2000 // size)
        old, new = best(before, number, rounds), best(now, number, rounds)
        rows.append(
            [
                str(size),
                f"{len(first):,}",
                us(old),
                us(new),
                ratio(new, old),
                us(old / size),
                us(new / size),
                us(cold / size),
            ]
        )
    return rows


# -- 2. the other per-delivery work ------------------------------------------------------


def _delivers_from_before(topic: str, routed_to: Iterable[str], subscribed: frozenset[str]) -> bool:
    # policy.delivers_from as of 4d319fe.
    return next((t for t in routed_to if t in subscribed), None) == topic


def _wanted_before(
    p: Partner, topics: frozenset[str], request: SubscriptionRequest
) -> Callable[[str, StoredObject], bool]:
    # exchange.subscriptions._wanted as of 4d319fe (the same but for delivers_from).
    types, labels = request.types, request.labels
    may_receive = policy.may_receive

    def wanted(topic: str, stored: StoredObject) -> bool:
        obj = stored.obj
        if not _delivers_from_before(topic, stored.topics, topics):
            return False
        if not may_receive(p, stored.audience):
            return False
        if types and obj.object_type not in types:
            return False
        return not labels or not labels.isdisjoint(obj.labels)

    return wanted


@dataclass(frozen=True, slots=True)
class _DeliveryBefore:
    # exchange.subscriptions.Delivery as of 4d319fe.
    stored: StoredObject
    cursor: str


def select(
    entries: list[Entry],
    position: StreamPosition,
    wanted: Callable[[str, StoredObject], bool],
    delivery: Callable[[StoredObject, str], object],
) -> tuple[list[object], str]:
    """A batch's deliveries and cursor, as Subscriptions._stream selects them."""
    deliveries: list[object] = []
    offsets, seqs, moved = position.offsets, position.seqs, position.moved
    for tp, offset, stored in entries:
        offsets[tp] = offset + 1
        moved.add(tp)
        if not isinstance(stored, StoredObject) or stored.seq <= seqs.get(tp, -1):
            continue
        seqs[tp] = stored.seq
        if wanted(tp[0], stored):
            deliveries.append(delivery(stored, position.cursor()))
    return deliveries, position.cursor()


_CACHED_PIECE = _subscription_request._piece


@contextlib.contextmanager
def pieces_cached(cached: bool) -> Iterator[None]:
    """Cursor pieces looked up in the shared cache (now), or encoded every time (before)."""
    _subscription_request._piece = _CACHED_PIECE if cached else _CACHED_PIECE.__wrapped__  # type: ignore[assignment]
    try:
        yield
    finally:
        _subscription_request._piece = _CACHED_PIECE


def per_delivery(rounds: int) -> list[list[str]]:
    entries = records(100, start=500_000)
    stored = stored_of(entries)
    p = partner(1)
    topics = frozenset(policy.subscription_topics(p))
    everything, malware = SubscriptionRequest(), SubscriptionRequest(types=frozenset({"malware"}))
    positions = [position_of(partner(n)) for n in range(STREAMS)]
    first_offsets = count(0, len(stored))

    def cursors() -> None:
        # Each stream's cursor after each of the same records (new offsets each time).
        first = next(first_offsets)
        for n in range(first, first + len(stored)):
            for position in positions:
                position.offsets[GREEN] = n + 1
                position.seqs[GREEN] = n
                position.moved.add(GREEN)
                position.cursor()

    def testing(wanted: Callable[[str, StoredObject], bool]) -> Callable[[], None]:
        def run() -> None:
            for s in stored:
                wanted("green", s)

        return run

    def per_record(run: Callable[[], object]) -> float:
        return best(run, 50, rounds) / len(stored)

    with pieces_cached(False):
        old = best(cursors, 5, rounds) / (STREAMS * len(stored))
    new = best(cursors, 5, rounds) / (STREAMS * len(stored))
    rows = [[f"cursor after a delivery, {STREAMS} streams", us(old), us(new), ratio(new, old)]]
    for what, request in (("delivered", everything), ("filtered out by type", malware)):
        old = per_record(testing(_wanted_before(p, topics, request)))
        new = per_record(testing(_wanted(p, topics, request)))
        rows.append([f"_wanted: {what}", us(old), us(new), ratio(new, old)])
    setup = best(lambda: position_of(p), 200, rounds)
    for size in (10, 100):
        chunk = entries[:size]

        def selecting(
            wanted: Callable[[str, StoredObject], bool],
            delivery: Callable[[StoredObject, str], object],
            chunk: list[Entry] = chunk,
        ) -> float:
            # A fresh position each time, so that every record is new to it.
            run = lambda: select(chunk, position_of(p), wanted, delivery)  # noqa: E731
            return (best(run, max(20, 2000 // len(chunk)), rounds) - setup) / len(chunk)

        with pieces_cached(False):
            old = selecting(_wanted_before(p, topics, everything), _DeliveryBefore)
        new = selecting(_wanted(p, topics, everything), Delivery)
        rows.append(
            [f"selecting a batch of {size}, per delivery", us(old), us(new), ratio(new, old)]
        )
    return rows


# -- 3. gRPC's write path ----------------------------------------------------------------

_SERVICE = "bench.Deliveries"
MODES = ("before", "now", "prebuilt")


def _server_process(conn: Connection, size: int) -> None:
    """A grpc.aio server streaming batches of ``size`` deliveries (see the docstring)."""
    stored = stored_of(records(size, start=900_000))
    prebuilt = subscribe_response_bytes(stream_batch(position_of(partner(0)), stored, 0))

    async def stream(request: bytes, context: grpc.aio.ServicerContext[bytes, Any]) -> None:
        mode, messages, stream_no = orjson.loads(request)
        position = position_of(partner(stream_no))
        # The streams of one mode run at a time.
        _subscription_request._piece = (
            _CACHED_PIECE.__wrapped__ if mode == "before" else _CACHED_PIECE  # type: ignore[assignment]
        )
        for m in range(messages):
            if mode == "prebuilt":
                await context.write(prebuilt)
                continue
            batch = stream_batch(position, stored, m * size)
            if mode == "before":
                await context.write(subscribe_response(batch))
            else:
                await context.write(subscribe_response_bytes(batch))

    async def cpu(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return orjson.dumps(time.process_time())

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)])
        handlers = {
            "Messages": grpc.unary_stream_rpc_method_handler(
                stream, response_serializer=pb.SubscribeResponse.SerializeToString
            ),
            "Bytes": grpc.unary_stream_rpc_method_handler(stream, response_serializer=None),
            "Cpu": grpc.unary_unary_rpc_method_handler(cpu),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await server.stop(None)

    asyncio.run(main())


@contextlib.contextmanager
def bench_server(size: int) -> Iterator[int]:
    """The port of a benchmark server in a spawned process; stopped on the way out."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_server_process, args=(child, size), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the benchmark server did not start")
        yield parent.recv()
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        parent.close()


async def _drive(port: int, mode: str, streams: int, messages: int) -> float:
    """The server's CPU seconds for ``streams`` streams of ``messages`` each."""
    method = "/bench.Deliveries/" + ("Messages" if mode == "before" else "Bytes")
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(streams)]
    try:
        raw = {"request_serializer": None, "response_deserializer": None}
        cpu_of = channels[0].unary_unary("/bench.Deliveries/Cpu", **raw)

        async def read(n: int) -> None:
            call = channels[n].unary_stream(method, **raw)(orjson.dumps([mode, messages, n]))
            async for _ in call:
                pass

        await cpu_of(b"")
        cpu_before = float(orjson.loads(await cpu_of(b"")))
        await asyncio.gather(*(read(n) for n in range(streams)))
        return float(orjson.loads(await cpu_of(b""))) - cpu_before
    finally:
        for channel in channels:
            await channel.close(None)


def write_path(rounds: int, messages: int) -> list[list[str]]:
    rows = []
    for size in BATCH_SIZES:
        per_stream = max(5, messages // size)
        with bench_server(size) as port:
            asyncio.run(_drive(port, "prebuilt", 4, 10))  # connections and code warm
            found: dict[str, float] = {}
            for _ in range(rounds):
                for mode in MODES:
                    cpu = asyncio.run(_drive(port, mode, STREAMS, per_stream))
                    per = cpu / (STREAMS * per_stream)
                    found[mode] = min(found.get(mode, per), per)
        old, new, floor = (found[m] for m in MODES)
        rows.append(
            [
                str(size),
                f"{STREAMS * per_stream:,}",
                us(old),
                us(new),
                ratio(new, old),
                us(floor),
                us(old / size),
                us(new / size),
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and messages")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7
    print("Delivery benchmark: bench/delivery.py" + (" --quick" if args.quick else ""))
    print(
        f"python: {platform.python_implementation()} {platform.python_version()},"
        f" grpcio {version('grpcio')}, protobuf {version('protobuf')}"
    )
    print()
    print("1. Encoding one stream's batch of N deliveries, µs (best of rounds): before =")
    print("   subscribe_response + SerializeToString, now = subscribe_response_bytes;")
    print("   first stream = encoding the shared bytes, once per record:")
    headers = ["N", "bytes", "before", "now", "now/before", "before/dlv", "now/dlv", "first/record"]
    print(table(headers, encoding(rounds)))
    print()
    print("2. Other per-delivery work of a stream, µs (best of rounds):")
    print(table(["what", "before", "now", "now/before"], per_delivery(rounds)))
    print()
    print(f"3. gRPC's write path: server CPU per message, µs, {STREAMS} streams (best of rounds);")
    print("   before = message built per stream + the method's serializer, now = shared")
    print("   bytes joined per stream, prebuilt = the same bytes every write (gRPC alone):")
    headers = ["N", "messages", "before", "now", "now/before", "prebuilt", "before/dlv", "now/dlv"]
    print(table(headers, write_path(2 if args.quick else 3, 100 if args.quick else 300)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
