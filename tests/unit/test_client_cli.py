"""`exchange submit` and `exchange subscribe` (exchange.cli_feed) against a fake exchange."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from exchange_client._pb import exchange_pb2 as pb
from exchange_client._pb import exchange_pb2_grpc as pb_grpc

from exchange.cli_feed import submit, subscribe

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "good-token"


class FakeExchange(pb_grpc.ExchangeServiceServicer):
    """Accepts ids without 'dup'/'bad'; 'dup' is a duplicate, 'bad' is rejected."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.batches: list[pb.SubscribeResponse] = []
        self.hold_open = False

    def _authenticate(self, context: Any) -> None:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API token")

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self._authenticate(context)
        try:
            objects = json.loads(request.bundle)["objects"]
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle is not JSON")
            raise
        response = pb.SubmitResponse()
        for index, obj in enumerate(objects):
            result = response.results.add(object_id=obj["id"], index=index)
            if "dup" in obj["id"]:
                result.outcome = pb.OUTCOME_DUPLICATE
            elif "bad" in obj["id"]:
                result.outcome = pb.OUTCOME_REJECTED
                result.rejection.message = f"{obj['id']}: confidence: expected 0-100, got 250"
            else:
                result.outcome = pb.OUTCOME_ACCEPTED
        return response

    def SubmitStream(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the CLI submits file by file")
        yield from ()

    def Subscribe(self, request: Any, context: Any) -> Iterator[pb.SubscribeResponse]:
        self._authenticate(context)
        self.requests.append(request)
        yield from self.batches
        while self.hold_open and context.is_active():
            time.sleep(0.01)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeExchange]:
    servicer = FakeExchange()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("EXCHANGE_TARGET", f"127.0.0.1:{port}")
    monkeypatch.setenv("EXCHANGE_TOKEN", TOKEN)
    monkeypatch.delenv("EXCHANGE_CA_FILE", raising=False)
    yield servicer
    server.stop(0)


def write_bundle(path: Path, *ids: str) -> Path:
    objects = [{"type": "indicator", "id": i} for i in ids]
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects}))
    return path


def delivery(n: int) -> pb.Delivery:
    obj_id = f"indicator--{n}"
    obj = {"type": "indicator", "id": obj_id, "labels": ["forced-labour"]}
    message = pb.Delivery(
        object=json.dumps(obj).encode(),
        object_id=obj_id,
        object_type="indicator",
        version="2024-05-01T10:00:00.000Z",
        submitter="ngo-a",
        submitter_identity="identity--a",
        tlp=pb.TLP_AMBER_STRICT,
        cursor=f"c{n}",
    )
    message.accepted_at.seconds = 1_714_557_600
    message.accepted_at.nanos = 5_000
    return message


# -- help ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [submit, subscribe])
def test_help(command: Any) -> None:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    assert "EXCHANGE_TARGET" in result.output
    assert "EXCHANGE_TOKEN" in result.output
    assert "--token" in result.output


# -- submit --------------------------------------------------------------------------


def test_submit_human_output(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1", "indicator--2", "indicator--dup")
    mixed = write_bundle(
        tmp_path / "mixed.json", "indicator--3", "indicator--bad1", "indicator--bad2"
    )
    result = CliRunner().invoke(submit, [str(good), str(mixed)])
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"{good}: 2 accepted, 1 duplicate, 0 rejected",
        f"{mixed}: 1 accepted, 0 duplicate, 2 rejected",
        "  indicator--bad1: confidence: expected 0-100, got 250",
        "  indicator--bad2: confidence: expected 0-100, got 250",
    ]
    assert result.stderr == ""


def test_submit_everything_accepted_exits_zero(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1", "indicator--dup")
    result = CliRunner().invoke(submit, [str(good)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{good}: 1 accepted, 1 duplicate, 0 rejected\n"


def test_submit_json_output(fake: FakeExchange, tmp_path: Path) -> None:
    mixed = write_bundle(
        tmp_path / "mixed.json", "indicator--1", "indicator--dup", "indicator--bad"
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    result = CliRunner().invoke(submit, ["--json", str(mixed), str(broken)])
    assert result.exit_code == 2, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {
            "file": str(mixed),
            "accepted": ["indicator--1"],
            "duplicates": ["indicator--dup"],
            "rejected": [
                {
                    "object_id": "indicator--bad",
                    "reason": "indicator--bad: confidence: expected 0-100, got 250",
                }
            ],
            "error": None,
        },
        {
            "file": str(broken),
            "accepted": [],
            "duplicates": [],
            "rejected": [],
            "error": "bundle is not JSON",
        },
    ]


def test_submit_refused_file_is_reported_and_the_rest_goes_on(
    fake: FakeExchange, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [str(broken), str(good)])
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{broken}: refused: bundle is not JSON",
        f"{good}: 1 accepted, 0 duplicate, 0 rejected",
    ]


def test_submit_stdin(fake: FakeExchange) -> None:
    data = json.dumps({"type": "bundle", "objects": [{"type": "indicator", "id": "indicator--9"}]})
    result = CliRunner().invoke(submit, ["-"], input=data)
    assert result.exit_code == 0, result.output
    assert result.stdout == "-: 1 accepted, 0 duplicate, 0 rejected\n"


def test_submit_bad_token_is_one_line_exit_1(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, ["--token", "wrong", str(good)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert "authentication failed: unknown API token" in result.stderr
    assert "Traceback" not in result.output


def test_submit_without_token(
    fake: FakeExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXCHANGE_TOKEN")
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [str(good)])
    assert result.exit_code == 1
    assert result.stderr == "error: no API token: pass --token or set EXCHANGE_TOKEN\n"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_submit_unreachable_exchange(tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    target = f"127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(submit, ["--target", target, "--token", "t", str(good)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {good}: cannot reach the exchange at {target}: ")
    assert result.stderr.count("\n") == 1


def test_submit_missing_file_is_a_usage_error(fake: FakeExchange, tmp_path: Path) -> None:
    result = CliRunner().invoke(submit, [str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# -- subscribe -----------------------------------------------------------------------


def test_subscribe_writes_json_lines(fake: FakeExchange) -> None:
    fake.batches = [
        pb.SubscribeResponse(deliveries=[delivery(1), delivery(2)], cursor="c2"),
        pb.SubscribeResponse(cursor="c3"),
        pb.SubscribeResponse(deliveries=[delivery(4)], cursor="c4"),
    ]
    fake.hold_open = True
    args = [
        "--from-beginning",
        "--type",
        "indicator",
        "--type",
        "malware",
        "--label",
        "forced-labour",
    ]
    result = CliRunner().invoke(subscribe, [*args, "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["cursor"] for line in lines] == ["c1", "c2", "c4"]
    assert lines[0] == {
        "cursor": "c1",
        "submitter": "ngo-a",
        "submitter_identity": "identity--a",
        "tlp": "amber+strict",
        "accepted_at": "2024-05-01T10:00:00.000005Z",
        "object_id": "indicator--1",
        "object_type": "indicator",
        "version": "2024-05-01T10:00:00.000Z",
        "object": {"type": "indicator", "id": "indicator--1", "labels": ["forced-labour"]},
    }
    request = fake.requests[0]
    assert request.from_beginning
    assert list(request.types) == ["indicator", "malware"]
    assert list(request.labels) == ["forced-labour"]


def test_subscribe_cursor(fake: FakeExchange) -> None:
    result = CliRunner().invoke(subscribe, ["--cursor", "c7"])
    assert result.exit_code == 0, result.output
    assert fake.requests[0].cursor == "c7"


def test_subscribe_cursor_and_from_beginning_exclude_each_other(fake: FakeExchange) -> None:
    result = CliRunner().invoke(subscribe, ["--cursor", "c7", "--from-beginning"])
    assert result.exit_code == 2
    assert "exclude each other" in result.stderr


def test_subscribe_bad_token(fake: FakeExchange) -> None:
    result = CliRunner().invoke(subscribe, ["--token", "wrong"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: authentication failed: unknown API token (check --token / EXCHANGE_TOKEN)\n"
    )


def test_subscribe_unreachable() -> None:
    target = f"127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(subscribe, ["--target", target, "--token", "t"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach the exchange at {target}: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_subscribe_ctrl_c_exits_quietly_with_130(fake: FakeExchange) -> None:
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")]
    fake.hold_open = True
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])
    process = subprocess.Popen(
        [sys.executable, "-c", "from exchange.cli_feed import subscribe; subscribe()"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # streaming, flushed per line
    assert first["cursor"] == "c1"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert stderr == b""
