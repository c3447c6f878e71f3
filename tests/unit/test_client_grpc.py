"""ExchangeClient against a fake in-process exchange: what goes on the wire, what comes back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from exchange_client import (
    BundleInput,
    ExchangeClient,
    SubmitResult,
    Subscription,
    ValidationError,
)
from exchange_client._pb import exchange_pb2 as pb
from exchange_client._pb import exchange_pb2_grpc as pb_grpc


def bundle(*object_ids: str) -> dict[str, Any]:
    return {
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [{"type": i.split("--")[0], "id": i} for i in object_ids],
    }


def judge(data: bytes) -> pb.SubmitResponse:
    """Accept every object, except ids containing 'dup' (duplicate) or 'bad' (rejected)."""
    response = pb.SubmitResponse()
    for index, obj in enumerate(json.loads(data)["objects"]):
        result = response.results.add(object_id=obj["id"], index=index, version="v1")
        if "dup" in obj["id"]:
            result.outcome = pb.OUTCOME_DUPLICATE
        elif "bad" in obj["id"]:
            result.outcome = pb.OUTCOME_REJECTED
            result.rejection.property = "confidence"
            result.rejection.message = f"{obj['id']}: confidence: expected 0-100"
        else:
            result.outcome = pb.OUTCOME_ACCEPTED
    return response


class FakeExchange(pb_grpc.ExchangeServiceServicer):
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.batches: list[pb.SubscribeResponse] = []
        self.hold_open = False
        self.stream_ended = threading.Event()
        self.reverse_stream = False

    def _record(self, context: Any, request: Any) -> None:
        self.calls.append(
            {
                "metadata": dict(context.invocation_metadata()),
                "time_remaining": context.time_remaining(),
                "request": request,
            }
        )

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self._record(context, request)
        try:
            return judge(request.bundle)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle is not JSON")
            raise

    def SubmitStream(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        self._record(context, None)
        responses = []
        for r in request_iterator:
            try:
                response = pb.SubmitStreamResponse(request_id=r.request_id, result=judge(r.bundle))
            except ValueError:
                response = pb.SubmitStreamResponse(request_id=r.request_id, error="not JSON")
            responses.append(response)
        if self.reverse_stream:
            responses.reverse()
        yield from responses

    def Subscribe(self, request: Any, context: Any) -> Iterator[pb.SubscribeResponse]:
        self._record(context, request)
        context.add_callback(self.stream_ended.set)
        yield from self.batches
        while self.hold_open and context.is_active():
            time.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[tuple[str, FakeExchange]]:
    servicer = FakeExchange()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def delivery(n: int, **fields: Any) -> pb.Delivery:
    obj = {"type": "indicator", "id": f"indicator--{n}"}
    message = pb.Delivery(
        object=json.dumps(obj).encode(),
        object_id=obj["id"],
        object_type="indicator",
        submitter="ngo-a",
        tlp=pb.TLP_GREEN,
        cursor=f"c{n}",
        **fields,
    )
    message.accepted_at.seconds = 1_714_557_600 + n
    return message


# -- submit --------------------------------------------------------------------


def test_submit_sends_token_deadline_and_bytes(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="s3cret") as client:
        result = client.submit(bundle("indicator--1", "indicator--dup", "indicator--bad"))
    assert result.accepted == ["indicator--1"]
    assert result.duplicates == ["indicator--dup"]
    assert [r.reason for r in result.rejected] == ["indicator--bad: confidence: expected 0-100"]
    call = servicer.calls[0]
    assert call["metadata"]["authorization"] == "Bearer s3cret"
    assert 50 < call["time_remaining"] <= 62  # the wire format rounds up
    assert json.loads(call["request"].bundle) == bundle(
        "indicator--1", "indicator--dup", "indicator--bad"
    )


def test_timeouts(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t", timeout=5) as client:
        client.submit(bundle())
        client.submit(bundle(), timeout=120)
    assert 3 < servicer.calls[0]["time_remaining"] <= 7
    assert 100 < servicer.calls[1]["time_remaining"] <= 122
    with ExchangeClient(target=target, token="t", timeout=None) as client:
        client.submit(bundle())
    assert servicer.calls[2]["time_remaining"] > 10**6  # gRPC's "no deadline"


def test_environment_defaults(
    fake: tuple[str, FakeExchange], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, servicer = fake
    monkeypatch.setenv("EXCHANGE_TARGET", target)
    monkeypatch.setenv("EXCHANGE_TOKEN", "from-env\n")
    with ExchangeClient() as client:
        assert client.target == target
        client.submit("{}".replace("{}", json.dumps(bundle())))
    assert servicer.calls[0]["metadata"]["authorization"] == "Bearer from-env"
    assert "from-env" not in repr(client)


def test_default_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXCHANGE_TARGET", raising=False)
    with ExchangeClient(token="t") as client:
        assert client.target == "127.0.0.1:50051"


def test_no_token_sends_no_authorization(
    fake: tuple[str, FakeExchange], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, servicer = fake
    monkeypatch.delenv("EXCHANGE_TOKEN", raising=False)
    with ExchangeClient(target=target) as client:
        client.submit(bundle())
    assert "authorization" not in servicer.calls[0]["metadata"]


def test_invalid_bundle_is_a_validation_error(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with (
        ExchangeClient(target=target, token="t") as client,
        pytest.raises(ValidationError) as caught,
    ):
        client.submit(b"{oops")
    assert str(caught.value) == "bundle is not JSON"
    assert caught.value.code == "INVALID_ARGUMENT"


def test_oversized_bundle_is_refused_before_sending(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with (
        ExchangeClient(target=target, token="t") as client,
        pytest.raises(ValidationError) as caught,
    ):
        client.submit(b" " * (64 * 1024 * 1024))
    assert "split it" in str(caught.value)
    assert servicer.calls == []


def test_large_bundle_within_limit_goes_through(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    big = bundle("indicator--1")
    big["objects"][0]["description"] = "x" * (20 * 1024 * 1024)  # above gRPC's 4 MiB default
    with ExchangeClient(target=target, token="t") as client:
        assert client.submit(big).accepted == ["indicator--1"]


def test_closed_client_refuses_calls(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    client = ExchangeClient(target=target, token="t")
    client.close()
    client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(bundle())
    with pytest.raises(RuntimeError, match="closed"):
        client.subscribe()


# -- submit_stream -----------------------------------------------------------------


def test_submit_stream_one_result_per_bundle_in_order(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.reverse_stream = True  # the client pairs results up by request_id
    bundles = [bundle(f"indicator--{n}") for n in range(5)] + [bundle("indicator--bad")]
    with ExchangeClient(target=target, token="t") as client:
        results = list(client.submit_stream(iter(bundles)))
    assert [r.accepted for r in results] == [[f"indicator--{n}"] for n in range(5)] + [[]]
    assert not results[-1].ok
    assert servicer.calls[0]["metadata"]["authorization"] == "Bearer t"


def test_submit_stream_refused_bundle_does_not_end_the_stream(
    fake: tuple[str, FakeExchange],
) -> None:
    target, _ = fake
    bundles: list[BundleInput] = [bundle("indicator--1"), b"{oops", bundle("indicator--2")]
    with ExchangeClient(target=target, token="t") as client:
        results = list(client.submit_stream(bundles))
    assert [r.accepted for r in results] == [["indicator--1"], [], ["indicator--2"]]
    assert [r.error for r in results] == [None, "not JSON", None]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].results == []


def test_submit_stream_unreadable_bundle_raises_after_earlier_results(
    fake: tuple[str, FakeExchange], tmp_path: Path
) -> None:
    target, _ = fake
    good = tmp_path / "good.json"
    good.write_text(json.dumps(bundle("indicator--1")))
    seen: list[SubmitResult] = []
    with ExchangeClient(target=target, token="t") as client:
        stream = client.submit_stream([good, tmp_path / "missing.json", good])
        with pytest.raises(FileNotFoundError):
            seen.extend(stream)
    assert [r.accepted for r in seen] == [["indicator--1"]]


def test_submit_stream_empty(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with ExchangeClient(target=target, token="t") as client:
        assert list(client.submit_stream([])) == []


# -- subscribe ---------------------------------------------------------------------


def test_subscribe_request(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        list(client.subscribe(types=["indicator", "malware"], labels="forced-labour"))
        list(client.subscribe(cursor="c9", max_batch=10))
        list(client.subscribe(from_beginning=True))
        list(client.subscribe())
    requests = [c["request"] for c in servicer.calls]
    assert list(requests[0].types) == ["indicator", "malware"]
    assert list(requests[0].labels) == ["forced-labour"]
    assert requests[0].WhichOneof("start") is None
    assert requests[1].cursor == "c9"
    assert requests[1].max_batch == 10
    assert requests[2].from_beginning
    assert requests[3].WhichOneof("start") is None
    assert all(c["time_remaining"] > 10**6 for c in servicer.calls)  # no deadline on the feed
    assert servicer.calls[0]["metadata"]["authorization"] == "Bearer t"


def test_subscribe_cursor_and_from_beginning_exclude_each_other(
    fake: tuple[str, FakeExchange],
) -> None:
    target, _ = fake
    with (
        ExchangeClient(target=target, token="t") as client,
        pytest.raises(ValueError, match="not both"),
    ):
        client.subscribe(cursor="c1", from_beginning=True)


def test_subscribe_batches_and_last_cursor(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.batches = [
        pb.SubscribeResponse(deliveries=[delivery(1), delivery(2)], cursor="c2+filtered"),
        pb.SubscribeResponse(cursor="c5"),  # nothing to deliver: only the position advances
        pb.SubscribeResponse(deliveries=[delivery(6)], cursor="c6"),
        pb.SubscribeResponse(cursor="c9"),
    ]
    with ExchangeClient(target=target, token="t") as client:
        subscription = client.subscribe(cursor="c0")
        assert isinstance(subscription, Subscription)
        assert subscription.last_cursor == "c0"
        first = next(subscription)
        assert (first.object_id, first.cursor, subscription.last_cursor) == (
            "indicator--1",
            "c1",
            "c1",
        )
        second = next(subscription)
        assert subscription.last_cursor == "c2+filtered"  # end of batch: the batch cursor
        assert second.tlp == "green"
        assert second.object == {"type": "indicator", "id": "indicator--2"}
        third = next(subscription)
        assert third.object_id == "indicator--6"
        assert subscription.last_cursor == "c6"
        with pytest.raises(StopIteration):
            next(subscription)
        assert subscription.last_cursor == "c9"
        assert subscription.closed


def test_subscribe_last_cursor_starts_empty(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with ExchangeClient(target=target, token="t") as client:
        assert client.subscribe().last_cursor is None


def test_breaking_out_cancels_the_stream(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.batches = [pb.SubscribeResponse(deliveries=[delivery(1), delivery(2)], cursor="c2")]
    servicer.hold_open = True
    with ExchangeClient(target=target, token="t") as client:
        subscription = client.subscribe(from_beginning=True)
        for d in subscription:
            assert d.cursor == "c1"
            break
        assert servicer.stream_ended.wait(5), "the server never saw the cancellation"
        assert subscription.closed
        assert subscription.last_cursor == "c1"


def test_close_from_another_thread_ends_iteration(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.batches = [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")]
    servicer.hold_open = True
    with ExchangeClient(target=target, token="t") as client:
        subscription = client.subscribe()
        threading.Timer(0.3, subscription.cancel).start()
        assert [d.cursor for d in subscription] == ["c1"]
    assert servicer.stream_ended.wait(5)


def test_closing_the_client_cancels_its_subscriptions(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.hold_open = True
    client = ExchangeClient(target=target, token="t")
    subscription = client.subscribe()
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.extend(subscription))
    reader.start()
    _wait_for(lambda: servicer.calls)
    client.close()
    reader.join(5)
    assert not reader.is_alive()
    assert received == []
    assert subscription.closed
    assert servicer.stream_ended.wait(5)


def test_subscription_context_manager(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    servicer.hold_open = True
    with ExchangeClient(target=target, token="t") as client:
        with client.subscribe() as subscription:
            _wait_for(lambda: servicer.calls)
        assert subscription.closed
        assert servicer.stream_ended.wait(5)


def _wait_for(condition: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- TLS ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_ca_file_switches_to_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    servicer = FakeExchange()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with ExchangeClient(target=f"127.0.0.1:{port}", token="t", ca_file=cert) as client:
            assert client.submit(bundle("indicator--1")).accepted == ["indicator--1"]
        monkeypatch.setenv("EXCHANGE_CA_FILE", str(cert))
        with ExchangeClient(target=f"127.0.0.1:{port}", token="t") as client:
            assert client.submit(bundle("indicator--2")).accepted == ["indicator--2"]
    finally:
        server.stop(0)


def test_missing_ca_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ExchangeClient(token="t", ca_file=tmp_path / "nope.pem")
