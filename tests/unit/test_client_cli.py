"""`exchange submit`, `get` and `subscribe` (exchange.cli_feed) against a fake exchange."""

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

from exchange import cli_feed
from exchange.cli_feed import get, submit, subscribe
from tests.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "good-token"


class FakeExchange(pb_grpc.ExchangeServiceServicer):
    """Accepts ids without 'dup'/'bad'; 'dup' is a duplicate, 'bad' is rejected;
    accepted ids containing 'notice' get a notice."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.submits: list[pb.SubmitRequest] = []
        self.batches: list[pb.SubscribeResponse] = []
        self.hold_open = False
        self.objects: dict[tuple[str, str], pb.Delivery] = {}

    def _authenticate(self, context: Any) -> None:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API token")

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self._authenticate(context)
        self.submits.append(request)
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
                if "notice" in obj["id"]:
                    result.notice = "keeps the wider audience of its earlier versions"
        return response

    def SubmitStream(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the CLI submits file by file")
        yield from ()

    def GetObject(self, request: Any, context: Any) -> pb.GetObjectResponse:
        self._authenticate(context)
        self.requests.append(request)
        found = self.objects.get((request.object_id, request.version))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no object {request.object_id}")
        return pb.GetObjectResponse(delivery=found)

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
    for name in ("EXCHANGE_CA_FILE", "EXCHANGE_CERT_FILE", "EXCHANGE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
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


@pytest.mark.parametrize("command", [submit, get, subscribe])
def test_help(command: Any) -> None:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    assert "EXCHANGE_TARGET" in result.output
    assert "EXCHANGE_TOKEN" in result.output
    assert "--token" in result.output
    for option in ("--cert-file", "EXCHANGE_CERT_FILE", "--key-file", "EXCHANGE_KEY_FILE"):
        assert option in result.output


def test_submit_help_shows_the_audience_options() -> None:
    output = CliRunner().invoke(submit, ["--help"]).output
    for option in ("--community NAME", "--recipient PARTNER_ID", "--exclude-kind KIND"):
        assert option in output
    assert "ngo, tech, government, intergovernmental, other" in " ".join(output.split())
    assert "exchange submit leads.json --community sea-taskforce --exclude-kind government" in (
        output
    )


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
            "notices": [],
            "error": None,
        },
        {
            "file": str(broken),
            "accepted": [],
            "duplicates": [],
            "rejected": [],
            "notices": [],
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
    assert result.stderr == (
        "error: no API token: pass --token or set EXCHANGE_TOKEN "
        "(or authenticate with a client certificate: --cert-file and --key-file)\n"
    )
    assert fake.submits == []


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


def test_submit_audience_options_reach_the_request(fake: FakeExchange, tmp_path: Path) -> None:
    first = write_bundle(tmp_path / "first.json", "indicator--1")
    second = write_bundle(tmp_path / "second.json", "indicator--2")
    args = [
        *("--community", "sea-taskforce", "--community", "gulf-labour"),
        *("--recipient", "ngo-lighthouse"),
        *("--exclude-kind", "government", "--exclude-kind", "Intergovernmental"),
    ]
    result = CliRunner().invoke(submit, [str(first), *args, str(second)])
    assert result.exit_code == 0, result.output
    assert len(fake.submits) == 2
    for request in fake.submits:  # the audience applies to every file
        assert list(request.audience.communities) == ["sea-taskforce", "gulf-labour"]
        assert list(request.audience.recipients) == ["ngo-lighthouse"]
        assert list(request.audience.exclude_kinds) == [
            pb.PARTNER_KIND_GOVERNMENT,
            pb.PARTNER_KIND_INTERGOVERNMENTAL,
        ]


def test_submit_without_audience_options_sends_none(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    assert CliRunner().invoke(submit, [str(good)]).exit_code == 0
    assert not fake.submits[0].HasField("audience")


def test_submit_unknown_exclude_kind_is_a_usage_error(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [str(good), "--exclude-kind", "police"])
    assert result.exit_code == 2
    assert "'police' is not one of" in result.stderr
    assert fake.submits == []


@pytest.mark.parametrize("option", ["--community", "--recipient"])
def test_submit_blank_audience_name_is_a_usage_error(
    fake: FakeExchange, tmp_path: Path, option: str
) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [str(good), option, "ngo-a", option, " "])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': must not be empty" in result.stderr
    assert "Traceback" not in result.output
    assert fake.submits == []


def test_submit_prints_notices(fake: FakeExchange, tmp_path: Path) -> None:
    path = write_bundle(
        tmp_path / "leads.json", "indicator--notice1", "indicator--2", "indicator--bad"
    )
    result = CliRunner().invoke(submit, [str(path)])
    assert result.exit_code == 2, result.output
    assert result.stdout.splitlines() == [
        f"{path}: 2 accepted, 0 duplicate, 1 rejected",
        "  indicator--bad: confidence: expected 0-100, got 250",
        "  notice: indicator--notice1: keeps the wider audience of its earlier versions",
    ]
    result = CliRunner().invoke(submit, ["--json", str(path)])
    record = json.loads(result.stdout)
    assert record["notices"] == [
        {
            "object_id": "indicator--notice1",
            "notice": "keeps the wider audience of its earlier versions",
        }
    ]
    assert record["accepted"] == ["indicator--notice1", "indicator--2"]


# -- client certificates -------------------------------------------------------------


def test_cert_file_without_key_file_is_one_line_exit_1(fake: FakeExchange, tmp_path: Path) -> None:
    pem = tmp_path / "client.pem"
    pem.write_text("")
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [str(good), "--cert-file", str(pem), "--ca-file", str(pem)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: a client certificate needs both --cert-file and")
    assert "--cert-file is set but --key-file is not" in result.stderr
    result = CliRunner().invoke(
        get, ["indicator--1", "--cert-file", str(pem), "--key-file", str(pem)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: a client certificate needs TLS: set --ca-file")
    assert fake.submits == fake.requests == []


def test_cert_files_from_the_environment_make_the_token_optional(
    fake: FakeExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem = tmp_path / "client.pem"
    pem.write_text("")
    monkeypatch.delenv("EXCHANGE_TOKEN")
    monkeypatch.setenv("EXCHANGE_CERT_FILE", str(pem))
    result = CliRunner().invoke(subscribe, [])
    # No complaint about the missing token: the key file is what is missing.
    assert result.exit_code == 1
    assert "--key-file is not" in result.stderr
    assert "no API token" not in result.stderr


def test_submit_over_mutual_tls_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority(tmp_path)
    localhost = ca.issue("localhost", server=True)
    lighthouse = ca.issue("ngo-lighthouse")

    class ByCertificate(FakeExchange):
        def _authenticate(self, context: Any) -> None:
            if context.auth_context().get("x509_common_name") != [b"ngo-lighthouse"]:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown client certificate")

    servicer = ByCertificate()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServiceServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(localhost.key.read_bytes(), localhost.pem)],
        root_certificates=ca.cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    for name in ("EXCHANGE_TOKEN", "EXCHANGE_CA_FILE", "EXCHANGE_CERT_FILE", "EXCHANGE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    try:
        result = CliRunner().invoke(
            submit,
            [
                str(good),
                *("--target", f"127.0.0.1:{port}", "--ca-file", str(ca.cert)),
                *("--cert-file", str(lighthouse.cert), "--key-file", str(lighthouse.key)),
            ],
        )
    finally:
        server.stop(0)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{good}: 1 accepted, 0 duplicate, 0 rejected\n"
    assert not servicer.submits[0].HasField("audience")


# -- get -----------------------------------------------------------------------------


def test_get_prints_the_object(fake: FakeExchange) -> None:
    latest, older = delivery(1), delivery(1)
    older.version = "2024-04-01T10:00:00.000Z"
    older.object = b'{"type":"indicator","id":"indicator--1","name":"older"}'
    fake.objects = {("indicator--1", ""): latest, ("indicator--1", older.version): older}
    result = CliRunner().invoke(get, ["indicator--1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "type": "indicator",
        "id": "indicator--1",
        "labels": ["forced-labour"],
    }
    assert result.stdout.count("\n") == 1
    result = CliRunner().invoke(get, ["indicator--1", "--version", older.version])
    assert result.exit_code == 0, result.output
    assert result.stdout == older.object.decode() + "\n"
    assert [(r.object_id, r.version) for r in fake.requests] == [
        ("indicator--1", ""),
        ("indicator--1", "2024-04-01T10:00:00.000Z"),
    ]


def test_get_not_found_is_one_line_exit_1(fake: FakeExchange) -> None:
    result = CliRunner().invoke(get, ["indicator--hidden"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: indicator--hidden: not found (or not visible to you)\n"
    result = CliRunner().invoke(get, ["indicator--hidden", "--version", "v9"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: indicator--hidden version v9: not found (or not visible to you)\n"
    )


def test_get_bad_token(fake: FakeExchange) -> None:
    result = CliRunner().invoke(get, ["indicator--1", "--token", "wrong"])
    assert result.exit_code == 1
    assert result.stderr == (
        "error: authentication failed: unknown API token (check --token / EXCHANGE_TOKEN)\n"
    )


def test_get_blank_object_id_is_a_usage_error(fake: FakeExchange) -> None:
    result = CliRunner().invoke(get, [" "])
    assert result.exit_code == 2
    assert "OBJECT_ID" in result.stderr
    assert fake.requests == []


def test_get_is_exported() -> None:
    assert set(cli_feed.__all__) == {"get", "submit", "subscribe"}


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
