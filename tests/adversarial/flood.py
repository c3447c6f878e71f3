"""A partner's runaway batch job, in a process of its own (so that its threads do not
compete with the test's measurements for the GIL):

    python -m tests.adversarial.flood TARGET TOKEN --connections 40 --calls 3 --mib 15

Each connection submits ``calls`` bundles of ``mib`` MiB one after another; prints the
status codes it got as JSON ({"OK": 29, "RESOURCE_EXHAUSTED": 91}).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter

import grpc
import orjson
from exchange_protocol.pb import exchange_pb2, exchange_pb2_grpc


def bundle_of(mib: int) -> bytes:
    """A bundle of ``mib`` MiB holding one object the validator refuses quickly."""
    return b'{"type": "bundle", "objects": [{"x": "' + b"y" * (mib * 1024 * 1024) + b'"}]}'


def flood(target: str, token: str, connections: int, calls: int, mib: int) -> Counter[str]:
    payload = bundle_of(mib)
    codes: Counter[str] = Counter()
    lock = threading.Lock()

    def one_connection() -> None:
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(target, options=options) as channel:
            stub = exchange_pb2_grpc.ExchangeServiceStub(channel)
            for _ in range(calls):
                try:
                    stub.Submit(
                        exchange_pb2.SubmitRequest(bundle=payload),
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=120,
                    )
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=one_connection) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("token")
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--mib", type=int, default=15)
    args = parser.parse_args()
    codes = flood(args.target, args.token, args.connections, args.calls, args.mib)
    sys.stdout.write(orjson.dumps(dict(codes)).decode() + "\n")


if __name__ == "__main__":
    main()
