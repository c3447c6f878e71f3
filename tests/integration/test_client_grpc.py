"""ExchangeClient against a fake in-process exchange: what goes on the wire, what comes back."""

from __future__ import annotations

import json
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
    Delivery,
    ExchangeClient,
    NotFound,
    PartnerKind,
    SubmitResult,
    Subscription,
    Unavailable,
    ValidationError,
)
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb import exchange_pb2_grpc as pb_grpc

from tests.certs import CertificateAuthority


def bundle(*object_ids: str) -> dict[str, Any]:
    return {
        "type": "bundle",
        "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
        "objects": [{"type": i.split("--")[0], "id": i} for i in object_ids],
    }


def judge(data: bytes) -> pb.SubmitResponse:
    """Accept every object, except ids containing 'dup' (duplicate) or 'bad' (rejected);
    accepted ids containing 'notice' get a notice."""
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
            if "notice" in obj["id"]:
                result.notice = f"{obj['id']} keeps\nthe wider audience of version v0"
    return response


class FakeExchange(pb_grpc.ExchangeServiceServicer):
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.batches: list[pb.SubscribeResponse] = []
        self.hold_open = False
        self.stream_ended = threading.Event()
        self.reverse_stream = False
        self.stream_requests: list[pb.SubmitStreamRequest] = []
        self.objects: dict[tuple[str, str], pb.Delivery] = {}

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
            self.stream_requests.append(r)
            try:
                response = pb.SubmitStreamResponse(request_id=r.request_id, result=judge(r.bundle))
            except ValueError:
                response = pb.SubmitStreamResponse(request_id=r.request_id, error="not JSON")
            responses.append(response)
        if self.reverse_stream:
            responses.reverse()
        yield from responses

    def Erase(self, request: Any, context: Any) -> pb.EraseResponse:
        # Not what these tests exercise (tests/e2e/test_erasure.py runs the real one).
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("abort raises")

    def GetObject(self, request: Any, context: Any) -> pb.GetObjectResponse:
        self._record(context, request)
        found = self.objects.get((request.object_id, request.version))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.object_id}")
        return pb.GetObjectResponse(delivery=found)

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


# -- audiences and notices ---------------------------------------------------------


def test_submit_without_audience_leaves_it_unset(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        client.submit(bundle("indicator--1"))
        client.submit(bundle("indicator--1"), communities=[], recipients=(), exclude_kinds=[])
    assert [c["request"].HasField("audience") for c in servicer.calls] == [False, False]


def test_submit_audience_reaches_the_request(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        client.submit(
            bundle("indicator--1"),
            communities=["sea-taskforce", "gulf-labour", "sea-taskforce"],
            recipients=("ngo-lighthouse",),
            exclude_kinds=["government", PartnerKind.INTERGOVERNMENTAL, "Government"],
        )
        # One string is one name, not its characters.
        client.submit(bundle("indicator--2"), communities="sea-taskforce", exclude_kinds="tech")
        client.submit(bundle("indicator--3"), recipients=" ngo-lighthouse ")
    first, second, third = (c["request"].audience for c in servicer.calls)
    assert list(first.communities) == ["sea-taskforce", "gulf-labour"]
    assert list(first.recipients) == ["ngo-lighthouse"]
    assert list(first.exclude_kinds) == [
        pb.PARTNER_KIND_GOVERNMENT,
        pb.PARTNER_KIND_INTERGOVERNMENTAL,
    ]
    assert list(second.communities) == ["sea-taskforce"]
    assert list(second.recipients) == []
    assert list(second.exclude_kinds) == [pb.PARTNER_KIND_TECH]
    assert (list(third.communities), list(third.recipients)) == ([], ["ngo-lighthouse"])


def test_every_partner_kind_maps_to_the_wire() -> None:
    assert [k.value for k in PartnerKind] == [
        "ngo",
        "tech",
        "government",
        "intergovernmental",
        "other",
    ]
    for kind in PartnerKind:
        assert pb.PartnerKind.Value(f"PARTNER_KIND_{kind.name}") != pb.PARTNER_KIND_UNSPECIFIED


def test_unknown_exclude_kind_is_refused_before_any_call(
    fake: tuple[str, FakeExchange],
) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        with pytest.raises(ValueError, match="police") as caught:
            client.submit(bundle("indicator--1"), exclude_kinds=["ngo", "police"])
        for kind in PartnerKind:
            assert repr(kind.value) in str(caught.value)
        with pytest.raises(ValueError, match="unknown partner kind"):
            client.submit_stream([bundle("indicator--1")], exclude_kinds="police")
        with pytest.raises(ValueError, match="unknown partner kind"):
            client.submit(bundle("indicator--1"), exclude_kinds="unspecified")
    assert servicer.calls == []


@pytest.mark.parametrize(
    "audience",
    [{"communities": [""]}, {"recipients": ["ngo-a", "  "]}, {"exclude_kinds": [""]}],
)
def test_blank_audience_names_are_refused(
    fake: tuple[str, FakeExchange], audience: dict[str, Any]
) -> None:
    target, servicer = fake
    with (
        ExchangeClient(target=target, token="t") as client,
        pytest.raises(ValueError, match="must not be empty"),
    ):
        client.submit(bundle("indicator--1"), **audience)
    assert servicer.calls == []


def test_audience_names_must_be_strings(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with ExchangeClient(target=target, token="t") as client:
        with pytest.raises(TypeError, match="communities"):
            client.submit(bundle("indicator--1"), communities=[42])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="bytes"):
            client.submit(bundle("indicator--1"), recipients=b"ngo-a")  # type: ignore[arg-type]


def test_submit_stream_audience_goes_with_every_bundle(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        results = list(
            client.submit_stream(
                [bundle("indicator--1"), bundle("indicator--2")],
                communities="sea-taskforce",
                recipients=["ngo-lighthouse", "tech-platform"],
                exclude_kinds=[PartnerKind.GOVERNMENT],
            )
        )
        list(client.submit_stream([bundle("indicator--3")]))
    assert [r.accepted for r in results] == [["indicator--1"], ["indicator--2"]]
    first, second, plain = servicer.stream_requests
    for request in (first, second):
        assert list(request.audience.communities) == ["sea-taskforce"]
        assert list(request.audience.recipients) == ["ngo-lighthouse", "tech-platform"]
        assert list(request.audience.exclude_kinds) == [pb.PARTNER_KIND_GOVERNMENT]
    assert not plain.HasField("audience")


def test_notices_are_parsed(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with ExchangeClient(target=target, token="t") as client:
        result = client.submit(bundle("indicator--1", "indicator--notice", "indicator--bad"))
        streamed = next(client.submit_stream([bundle("indicator--notice")]))
    assert [r.notice for r in result.results] == [
        "",
        "indicator--notice keeps the wider audience of version v0",  # one line
        "",
    ]
    assert result.accepted == ["indicator--1", "indicator--notice"]
    assert result.ok is False
    assert streamed.results[0].notice.startswith("indicator--notice keeps")


# -- get ---------------------------------------------------------------------------


def test_get_returns_a_delivery(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    latest, older = delivery(7, version="v2"), delivery(7, version="v1")
    latest.cursor = older.cursor = ""  # a look-up has no stream position
    servicer.objects = {("indicator--7", ""): latest, ("indicator--7", "v1"): older}
    with ExchangeClient(target=target, token="s3cret", timeout=5) as client:
        got = client.get("indicator--7")
        old = client.get("indicator--7", version="v1", timeout=30)
    assert isinstance(got, Delivery)
    assert (got.object_id, got.version, got.tlp, got.cursor) == ("indicator--7", "v2", "green", "")
    assert got.object == {"type": "indicator", "id": "indicator--7"}
    assert old.version == "v1"
    first, second = servicer.calls
    assert (first["request"].object_id, first["request"].version) == ("indicator--7", "")
    assert (second["request"].object_id, second["request"].version) == ("indicator--7", "v1")
    assert first["metadata"]["authorization"] == "Bearer s3cret"
    assert 3 < first["time_remaining"] <= 7  # the client's unary deadline
    assert 25 < second["time_remaining"] <= 32


def test_get_not_found(fake: tuple[str, FakeExchange]) -> None:
    target, _ = fake
    with (
        ExchangeClient(target=target, token="t") as client,
        pytest.raises(NotFound) as caught,
    ):
        client.get("indicator--hidden")
    assert caught.value.code == "NOT_FOUND"
    assert str(caught.value) == "no object indicator--hidden"


def test_get_needs_an_object_id(fake: tuple[str, FakeExchange]) -> None:
    target, servicer = fake
    with ExchangeClient(target=target, token="t") as client:
        with pytest.raises(ValueError, match="object_id"):
            client.get("")
        with pytest.raises(ValueError, match="object_id"):
            client.get("  ")
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.get("indicator--1")
    assert servicer.calls == []


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


def test_ca_file_switches_to_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority(tmp_path)
    localhost = ca.issue("localhost", server=True)
    servicer = FakeExchange()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([(localhost.key.read_bytes(), localhost.pem)])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with ExchangeClient(target=f"127.0.0.1:{port}", token="t", ca_file=ca.cert) as client:
            assert client.submit(bundle("indicator--1")).accepted == ["indicator--1"]
        monkeypatch.setenv("EXCHANGE_CA_FILE", str(ca.cert))
        with ExchangeClient(target=f"127.0.0.1:{port}", token="t") as client:
            assert client.submit(bundle("indicator--2")).accepted == ["indicator--2"]
    finally:
        server.stop(0)


def test_missing_ca_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ExchangeClient(token="t", ca_file=tmp_path / "nope.pem")


@pytest.fixture
def no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EXCHANGE_CA_FILE", "EXCHANGE_CERT_FILE", "EXCHANGE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_tls_env")
def test_client_certificate_needs_its_key_and_a_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = tmp_path / "any.pem"
    pem.write_text("not read: the arguments are checked first")
    with pytest.raises(ValueError, match="cert_file is set but key_file is not"):
        ExchangeClient(token="t", ca_file=pem, cert_file=pem)
    with pytest.raises(ValueError, match="key_file is set but cert_file is not"):
        ExchangeClient(token="t", ca_file=pem, key_file=pem)
    with pytest.raises(ValueError, match=r"needs TLS: set ca_file \(\$EXCHANGE_CA_FILE\)"):
        ExchangeClient(cert_file=pem, key_file=pem)
    monkeypatch.setenv("EXCHANGE_CERT_FILE", str(pem))  # the environment is checked alike
    with pytest.raises(ValueError, match="key_file is not"):
        ExchangeClient(token="t", ca_file=pem)
    monkeypatch.setenv("EXCHANGE_KEY_FILE", str(pem))
    with pytest.raises(ValueError, match="needs TLS"):
        ExchangeClient(token="t")


@pytest.mark.usefixtures("no_tls_env")
def test_missing_client_certificate_raises(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("")
    with pytest.raises(FileNotFoundError):
        ExchangeClient(ca_file=pem, cert_file=tmp_path / "nope.pem", key_file=pem)


class _PeerRecorder(FakeExchange):
    def __init__(self) -> None:
        super().__init__()
        self.peers: list[list[bytes]] = []

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self.peers.append(list(context.auth_context().get("x509_common_name", [])))
        return super().Submit(request, context)


@pytest.mark.usefixtures("no_tls_env")
def test_client_certificate_is_presented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority(tmp_path)
    localhost = ca.issue("localhost", server=True)
    lighthouse = ca.issue("ngo-lighthouse")
    servicer = _PeerRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(localhost.key.read_bytes(), localhost.pem)],
        root_certificates=ca.cert.read_bytes(),
        require_client_auth=True,
    )
    target = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', credentials)}"
    server.start()
    try:
        # No token: the certificate is the credential.
        with ExchangeClient(
            target=target, ca_file=ca.cert, cert_file=lighthouse.cert, key_file=lighthouse.key
        ) as client:
            assert client.submit(bundle("indicator--1")).accepted == ["indicator--1"]
        assert "authorization" not in servicer.calls[0]["metadata"]
        monkeypatch.setenv("EXCHANGE_CA_FILE", str(ca.cert))
        monkeypatch.setenv("EXCHANGE_CERT_FILE", str(lighthouse.cert))
        monkeypatch.setenv("EXCHANGE_KEY_FILE", str(lighthouse.key))
        with ExchangeClient(target=target, token="t") as client:
            assert client.submit(bundle("indicator--2")).accepted == ["indicator--2"]
        assert servicer.calls[1]["metadata"]["authorization"] == "Bearer t"
        assert servicer.peers == [[b"ngo-lighthouse"], [b"ngo-lighthouse"]]
        # Without the certificate the server refuses the handshake.
        monkeypatch.delenv("EXCHANGE_CERT_FILE")
        monkeypatch.delenv("EXCHANGE_KEY_FILE")
        with (
            ExchangeClient(target=target, token="t", timeout=5) as client,
            pytest.raises(Unavailable),
        ):
            client.submit(bundle("indicator--3"))
        assert len(servicer.calls) == 2
    finally:
        server.stop(0)
