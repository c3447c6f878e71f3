"""`exchange submit`, `get`, `subscribe`, `sighting` and `revoke` against a fake exchange."""

from __future__ import annotations

import json
import os
import re
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
from exchange_protocol.pb import exchange_pb2 as pb
from exchange_protocol.pb import exchange_pb2_grpc as pb_grpc
from exchange_protocol.subscribe import RESUME_KEY, TOPICS_CHANGED

from exchange.cli import _output, objects
from exchange.cli import submit as submit_module
from exchange.cli import subscribe as subscribe_module
from exchange.cli.objects import get, revoke, sighting
from exchange.cli.submit import submit
from exchange.cli.subscribe import subscribe
from tests.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "good-token"


class FakeExchange(pb_grpc.ExchangeServiceServicer):
    """Answers by the name after a test id's '--' (a random UUID names nothing: "bad" may
    be in one): 'dup' is a duplicate, 'bad' is rejected, 'multi' has several problems,
    'notice' is accepted with a notice; everything else is accepted."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.submits: list[pb.SubmitRequest] = []
        self.batches: list[pb.SubscribeResponse] = []
        self.hold_open = False
        self.objects: dict[tuple[str, str], pb.Delivery] = {}
        self.stream_requests: list[pb.SubmitStreamRequest] = []
        self.reject_all = False
        self.unavailable_first = 0  # Subscribe calls to fail with UNAVAILABLE first
        # Subscribe calls played first, one each: its messages, then UNAVAILABLE with
        # these details (None: play on as without a script), marked "resume" or not.
        self.scripted: list[tuple[list[pb.SubscribeResponse], str | None, bool]] = []

    def _authenticate(self, context: Any) -> None:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API token")

    def _answer(self, bundle: bytes) -> pb.SubmitResponse:
        objects = json.loads(bundle)["objects"]
        response = pb.SubmitResponse()
        for index, obj in enumerate(objects):
            result = response.results.add(
                object_id=obj["id"], index=index, version=obj.get("modified", "")
            )
            name = obj["id"].partition("--")[2]
            if "-" in name:  # a UUID
                name = ""
            if "dup" in name:
                result.outcome = pb.OUTCOME_DUPLICATE
            elif "multi" in name:
                result.outcome = pb.OUTCOME_REJECTED
                rejection = result.rejection
                rejection.message = f"{obj['id']}: 4 problems: ..."
                rejection.property, rejection.expected = "confidence", "0-100, got 250"
                for prop, expected in (
                    ("confidence", "0-100, got 250"),
                    ("pattern", "a valid STIX pattern; unexpected end of pattern at column 9"),
                ):
                    rejection.problems.add(property=prop, expected=expected)
                rejection.more_problems = 2
            elif "bad" in name or self.reject_all:
                result.outcome = pb.OUTCOME_REJECTED
                result.rejection.message = f"{obj['id']}: confidence: expected 0-100, got 250"
                result.rejection.property = "confidence"
                result.rejection.expected = "0-100"
            else:
                result.outcome = pb.OUTCOME_ACCEPTED
                if "notice" in name:
                    result.notice = "keeps the wider audience of its earlier versions"
        return response

    def Submit(self, request: Any, context: Any) -> pb.SubmitResponse:
        self._authenticate(context)
        self.submits.append(request)
        try:
            return self._answer(request.bundle)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bundle is not JSON")
            raise

    def SubmitStream(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        self._authenticate(context)
        for request in request_iterator:
            self.stream_requests.append(request)
            yield pb.SubmitStreamResponse(
                request_id=request.request_id, result=self._answer(request.bundle)
            )

    def Erase(self, request: Any, context: Any) -> pb.EraseResponse:
        # Not what these tests exercise (tests/e2e/test_erasure.py runs the real one).
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")
        raise AssertionError("abort raises")

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
        if self.unavailable_first:
            self.unavailable_first -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "the exchange is restarting")
        if self.scripted:
            messages, ending, resume = self.scripted.pop(0)
            yield from messages
            if resume:
                context.set_trailing_metadata(((RESUME_KEY, TOPICS_CHANGED),))
            if ending is not None:
                context.abort(grpc.StatusCode.UNAVAILABLE, ending)
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


def delivery(n: int, seconds: int = 1_714_557_600, **extra: Any) -> pb.Delivery:
    obj_id = f"indicator--{n}"
    obj = {"type": "indicator", "id": obj_id, "labels": ["forced-labour"], **extra}
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
    message.accepted_at.seconds = seconds
    message.accepted_at.nanos = 5_000
    return message


# -- help ----------------------------------------------------------------------------


def rows(text: str) -> list[list[str]]:
    """The rows of rich's tables (cells: runs of text between 2+ spaces), rules left out."""
    return [
        re.split(r"\s{2,}", line.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("\u2500")
    ]


@pytest.mark.parametrize("command", [submit, get, subscribe, sighting, revoke])
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
    # Not a terminal: a line per file, plain lines for the rejected objects.
    assert rows(result.stdout) == [
        [f"{good}: 2 accepted, 1 duplicate, 0 rejected"],
        [f"{mixed}: 1 accepted, 0 duplicate, 2 rejected"],
        ["Rejected objects:"],
        ["FILE", "OBJECT", "PROPERTY", "PROBLEM"],
        [str(mixed), "indicator--bad1", "confidence", "expected 0-100, got 250"],
        [str(mixed), "indicator--bad2", "confidence", "expected 0-100, got 250"],
        ["2 files: 3 accepted, 1 duplicate, 2 rejected"],
    ]
    assert all(line == line.rstrip() for line in result.stdout.splitlines())
    assert result.stderr == ""  # no progress bar: stderr is not a terminal


def test_submit_shows_each_problem_of_an_object(fake: FakeExchange, tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "multi.json", "indicator--multi")
    result = CliRunner().invoke(submit, [str(path)])
    assert result.exit_code == 2, result.output
    assert rows(result.stdout)[:6] == [
        [f"{path}: 0 accepted, 0 duplicate, 1 rejected"],
        ["Rejected objects:"],
        ["FILE", "OBJECT", "PROPERTY", "PROBLEM"],
        [str(path), "indicator--multi", "confidence", "expected 0-100, got 250"],
        [
            str(path),
            "indicator--multi",
            "pattern",
            "expected a valid STIX pattern; unexpected end of pattern at column 9",
        ],
        [str(path), "indicator--multi", "-", "... and 2 more"],
    ]


def test_submit_on_a_terminal_shows_tables(
    fake: FakeExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bundle(tmp_path / "good.json", "indicator--1", "indicator--2", "indicator--dup")
    write_bundle(tmp_path / "mixed.json", "indicator--3", "indicator--bad1")
    monkeypatch.chdir(tmp_path)  # short names: a terminal's table wraps to its width
    monkeypatch.setattr(_output, "is_terminal", lambda stream: True)
    result = CliRunner().invoke(submit, ["good.json", "mixed.json"])
    assert result.exit_code == 2, result.output
    table = rows(result.stdout)
    assert table[:3] == [
        ["FILE", "ACCEPTED", "DUPLICATE", "REJECTED"],
        ["good.json", "2", "1", "0"],
        ["mixed.json", "1", "0", "1"],
    ]
    assert ["Rejected objects"] in table
    assert table[-1] == ["2 files: 3 accepted, 1 duplicate, 1 rejected"]
    # One file: its line, on a terminal too (as README.md shows it).
    result = CliRunner().invoke(submit, ["good.json"])
    assert rows(result.stdout) == [["good.json: 2 accepted, 1 duplicate, 0 rejected"]]


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
                    "problems": [{"property": "confidence", "expected": "0-100"}],
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


def test_token_from_a_file_or_the_environment_not_only_the_command_line(
    fake: FakeExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --token value shows in `ps` to every user of the machine: the token can come
    from a file (--token-file, EXCHANGE_TOKEN_FILE) or EXCHANGE_TOKEN, and --help says so."""
    monkeypatch.delenv("EXCHANGE_TOKEN")
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    token_file = tmp_path / "ngo.token"
    token_file.write_text(TOKEN + "\n")
    result = CliRunner().invoke(submit, ["--token-file", str(token_file), str(good)])
    assert result.exit_code == 0, result.output
    # A file named on the command line wins over a stale variable.
    monkeypatch.setenv("EXCHANGE_TOKEN", "stale")
    result = CliRunner().invoke(submit, ["--token-file", str(token_file), str(good)])
    assert result.exit_code == 0, result.output
    monkeypatch.delenv("EXCHANGE_TOKEN")
    monkeypatch.setenv("EXCHANGE_TOKEN_FILE", str(token_file))
    result = CliRunner().invoke(submit, [str(good)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        submit, ["--token", "x", "--token-file", str(token_file), str(good)]
    )
    assert result.exit_code == 2
    assert "--token and --token-file exclude each other" in result.stderr
    token_file.write_text("\n")
    result = CliRunner().invoke(submit, [str(good)])
    assert result.exit_code == 2
    assert "must hold one token" in result.stderr
    sent = len(fake.submits)
    result = CliRunner().invoke(submit, ["--token-file", "/dev/zero", str(good)])
    assert result.exit_code == 2
    assert "/dev/zero is over 4,096 bytes: not a token file" in result.stderr
    assert len(fake.submits) == sent
    help_text = " ".join(CliRunner().invoke(submit, ["--help"]).output.split())
    assert "shows in the process list (ps)" in help_text
    assert "EXCHANGE_TOKEN_FILE" in help_text


def test_submit_refused_file_is_reported_and_the_rest_goes_on(
    fake: FakeExchange, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, [shown(broken), str(good)])
    assert result.exit_code == 2
    assert rows(result.stdout) == [
        [f"{shown(broken)}: 0 accepted, 0 duplicate, 0 rejected, refused: bundle is not JSON"],
        [f"{good}: 1 accepted, 0 duplicate, 0 rejected"],
        ["2 files: 1 accepted, 0 duplicate, 0 rejected, 1 refused"],
    ]


def test_submit_stdin(fake: FakeExchange) -> None:
    data = json.dumps({"type": "bundle", "objects": [{"type": "indicator", "id": "indicator--9"}]})
    result = CliRunner().invoke(submit, ["-"], input=data)
    assert result.exit_code == 0, result.output
    assert result.stdout == "-: 1 accepted, 0 duplicate, 0 rejected\n"
    result = CliRunner().invoke(submit, ["-", "-"], input=data)
    assert result.exit_code == 2
    assert "'-' (stdin) may be given only once" in result.stderr


def test_submit_bad_token_is_one_line_exit_1(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, ["--token", "wrong", str(good)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("exchange: ")
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
        "exchange: no API token: set EXCHANGE_TOKEN or pass --token-file (or --token) "
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
    assert result.stderr.startswith(f"exchange: {good}: cannot reach the exchange at {target}: ")
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
    result = CliRunner().invoke(submit, [shown(first), *args, str(second)])
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
    assert rows(result.stdout) == [
        [f"{path}: 2 accepted, 0 duplicate, 1 rejected"],
        ["Rejected objects:"],
        ["FILE", "OBJECT", "PROPERTY", "PROBLEM"],
        [str(path), "indicator--bad", "confidence", "expected 0-100, got 250"],
        ["Notices:"],
        ["FILE", "OBJECT", "NOTICE"],
        [
            str(path),
            "indicator--notice1",
            "keeps the wider audience of its earlier versions",
        ],
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
    assert result.stderr.startswith("exchange: a client certificate needs both --cert-file and")
    assert "--cert-file is set but --key-file is not" in result.stderr
    result = CliRunner().invoke(
        get, ["indicator--1", "--cert-file", str(pem), "--key-file", str(pem)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("exchange: a client certificate needs TLS: set --ca-file")
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
    assert result.stderr == "exchange: indicator--hidden: not found (or not visible to you)\n"
    result = CliRunner().invoke(get, ["indicator--hidden", "--version", "v9"])
    assert result.exit_code == 1
    assert result.stderr == (
        "exchange: indicator--hidden version v9: not found (or not visible to you)\n"
    )


def test_get_bad_token(fake: FakeExchange) -> None:
    result = CliRunner().invoke(get, ["indicator--1", "--token", "wrong"])
    assert result.exit_code == 1
    assert result.stderr == (
        "exchange: authentication failed: unknown API token (check --token / EXCHANGE_TOKEN)\n"
    )


def test_get_blank_object_id_is_a_usage_error(fake: FakeExchange) -> None:
    result = CliRunner().invoke(get, [" "])
    assert result.exit_code == 2
    assert "OBJECT_ID" in result.stderr
    assert fake.requests == []


def test_commands_are_exported() -> None:
    exported = {*objects.__all__, *submit_module.__all__, *subscribe_module.__all__}
    assert exported == {"get", "revoke", "sighting", "submit", "subscribe"}


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
        "exchange: authentication failed: unknown API token (check --token / EXCHANGE_TOKEN)\n"
    )


def test_subscribe_unreachable_without_reconnect() -> None:
    target = f"127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(subscribe, ["--target", target, "--token", "t", "--no-reconnect"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"exchange: cannot reach the exchange at {target}: ")
    assert result.stderr.count("\n") == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_subscribe_ctrl_c_exits_quietly_with_130(fake: FakeExchange) -> None:
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")]
    fake.hold_open = True
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])
    # Python ignores SIGINT for good when it starts with SIGINT ignored, as every job a
    # non-interactive shell puts in the background does: give the child Ctrl-C back,
    # as a terminal's foreground job has it.
    child = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
        " from exchange.cli.subscribe import subscribe; subscribe()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child],
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


# -- submit: directories, large files, progress, --quiet -------------------------------


def test_submit_directory_is_every_json_file_below_it_sorted(
    fake: FakeExchange, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "b-sub").mkdir(parents=True)
    first = write_bundle(corpus / "a.json", "indicator--1")
    nested = write_bundle(corpus / "b-sub" / "c.json", "indicator--2", "indicator--bad")
    last = write_bundle(corpus / "d.json", "indicator--dup")
    (corpus / "notes.txt").write_text("not a bundle")
    result = CliRunner().invoke(submit, [str(corpus)])
    assert result.exit_code == 2, result.output
    table = rows(result.stdout)
    assert table[:3] == [
        [f"{shown(first)}: 1 accepted, 0 duplicate, 0 rejected"],
        [f"{shown(nested)}: 1 accepted, 0 duplicate, 1 rejected"],
        [f"{shown(last)}: 0 accepted, 1 duplicate, 0 rejected"],
    ]
    assert table[-1] == ["3 files: 2 accepted, 1 duplicate, 1 rejected"]
    assert len(fake.submits) == 3


def test_submit_empty_directory_is_a_usage_error(fake: FakeExchange, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(submit, [str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no *.json file in this directory" in result.stderr
    assert fake.submits == []


def test_submit_large_file_goes_in_batches(fake: FakeExchange, tmp_path: Path) -> None:
    ids = [f"indicator--{n}" for n in range(1_200)] + ["indicator--bad", "indicator--dup"]
    big = write_bundle(tmp_path / "big.json", *ids)
    result = CliRunner().invoke(submit, [str(big)])
    assert result.exit_code == 2, result.output
    assert rows(result.stdout)[0] == [f"{big}: 1200 accepted, 1 duplicate, 1 rejected"]
    assert fake.submits == []
    assert len(fake.stream_requests) == 3  # 500 + 500 + 202
    result = CliRunner().invoke(submit, ["--json", str(big)])
    record = json.loads(result.stdout)
    assert len(record["accepted"]) == 1_200
    assert record["rejected"] == [
        {
            "object_id": "indicator--bad",
            "reason": "indicator--bad: confidence: expected 0-100, got 250",
            "problems": [{"property": "confidence", "expected": "0-100"}],
        }
    ]


def test_submit_progress_bar_only_on_a_terminal(
    fake: FakeExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = write_bundle(tmp_path / "one.json", "indicator--1")
    two = write_bundle(tmp_path / "two.json", "indicator--2", "indicator--3")
    monkeypatch.setattr(_output, "is_terminal", lambda stream: True)
    result = CliRunner().invoke(submit, [str(one), str(two)])
    assert result.exit_code == 0, result.output
    assert "objects" in result.stderr  # the bar: "3/3 objects"
    assert rows(result.stdout)[-1] == ["2 files: 3 accepted, 0 duplicate, 0 rejected"]
    for quiet in ("--json", "--quiet"):
        result = CliRunner().invoke(submit, [quiet, str(one), str(two)])
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
    # One small file: no bar.
    result = CliRunner().invoke(submit, [str(one)])
    assert result.stderr == ""


def test_submit_quiet_prints_only_problems(fake: FakeExchange, tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good.json", "indicator--1")
    result = CliRunner().invoke(submit, ["--quiet", str(good)])
    assert (result.exit_code, result.stdout) == (0, "")
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    mixed = write_bundle(tmp_path / "mixed.json", "indicator--2", "indicator--bad")
    result = CliRunner().invoke(submit, ["-q", str(good), str(broken), str(mixed)])
    assert result.exit_code == 2
    assert rows(result.stdout) == [
        ["FILE", "ERROR"],
        [shown(broken), "refused: bundle is not JSON"],
        ["Rejected objects:"],
        ["FILE", "OBJECT", "PROPERTY", "PROBLEM"],
        [str(mixed), "indicator--bad", "confidence", "expected 0-100, got 250"],
    ]


# -- sighting and revoke -------------------------------------------------------------


def test_sighting(fake: FakeExchange) -> None:
    result = CliRunner().invoke(
        sighting,
        [
            "indicator--1",
            *("--count", "3", "--first-seen", "2026-11-01", "--last-seen", "2026-11-02T10:00Z"),
            *("--tlp", "green", "--description", "seen in a job ad"),
        ],
    )
    assert result.exit_code == 0, result.output
    (request,) = fake.submits
    (obj,) = json.loads(request.bundle)["objects"]
    assert obj["type"] == "sighting"
    assert obj["sighting_of_ref"] == "indicator--1"
    assert obj["count"] == 3
    assert obj["first_seen"] == "2026-11-01T00:00:00.000Z"
    assert obj["last_seen"] == "2026-11-02T10:00:00.000Z"
    assert obj["description"] == "seen in a job ad"
    assert result.stdout.splitlines() == [
        f"{obj['id']}: sighting of indicator--1 recorded (version {obj['modified']})"
    ]


def test_sighting_json_and_rejection(fake: FakeExchange) -> None:
    result = CliRunner().invoke(sighting, ["indicator--1", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["outcome"] == "accepted"
    assert record["object_id"].startswith("sighting--")
    fake.reject_all = True
    result = CliRunner().invoke(sighting, ["indicator--1"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("exchange: sighting rejected: sighting--")
    assert result.stderr.endswith(": confidence: expected 0-100, got 250\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["indicator--1", "--first-seen", "yesterday"], "is not an ISO 8601 time"),
        (["indicator--1", "--count", "0"], "0 is not in the range x>=1"),
        (["indicator--1", "--tlp", "amberish"], "'amberish' is not one of"),
        (
            ["indicator--1", "--first-seen", "2026-11-02", "--last-seen", "2026-11-01"],
            "--first-seen is after --last-seen",
        ),
        (["not-an-id"], "is not a STIX id"),
    ],
)
def test_sighting_bad_command_line(fake: FakeExchange, args: list[str], message: str) -> None:
    result = CliRunner().invoke(sighting, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert fake.submits == []


def _stored(object_id: str) -> pb.Delivery:
    message = delivery(1)
    message.object_id = object_id
    message.object = json.dumps(
        {
            "type": "indicator",
            "spec_version": "2.1",
            "id": object_id,
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "pattern": "[x-phone-number:value = '+15550001111']",
        }
    ).encode()
    return message


def test_revoke(fake: FakeExchange) -> None:
    fake.objects = {("indicator--1", ""): _stored("indicator--1")}
    result = CliRunner().invoke(revoke, ["indicator--1"])
    assert result.exit_code == 0, result.output
    (obj,) = json.loads(fake.submits[0].bundle)["objects"]
    assert obj["revoked"] is True
    assert obj["modified"] > "2026-01-01T00:00:00.000Z"
    assert result.stdout == f"indicator--1: revoked (version {obj['modified']})\n"


def test_revoke_not_found_and_rejected(fake: FakeExchange) -> None:
    result = CliRunner().invoke(revoke, ["indicator--9"])
    assert result.exit_code == 1
    assert result.stderr == "exchange: indicator--9: not found (or not visible to you)\n"
    fake.objects = {("indicator--bad", ""): _stored("indicator--bad")}
    result = CliRunner().invoke(revoke, ["indicator--bad"])
    assert result.exit_code == 2
    assert result.stderr == (
        "exchange: revocation rejected: indicator--bad: confidence: expected 0-100, got 250\n"
    )
    result = CliRunner().invoke(revoke, ["indicator--bad", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["outcome"] == "rejected"


# -- subscribe: --format, --since, --cursor-file, reconnecting -----------------------


def test_subscribe_pretty(fake: FakeExchange) -> None:
    fake.batches = [
        pb.SubscribeResponse(
            deliveries=[
                delivery(1, pattern="[x-phone-number:value = '+15550001111']"),
                delivery(2, name="Lure", revoked=True),
            ],
            cursor="c2",
        )
    ]
    result = CliRunner().invoke(subscribe, ["--format", "pretty", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines()] == [
        [
            *("2024-05-01", "10:00:00Z", "TLP:AMBER+STRICT", "indicator", "indicator--1"),
            *("by", "ngo-a", "[x-phone-number:value", "=", "'+15550001111']"),
        ],
        [
            *("2024-05-01", "10:00:00Z", "TLP:AMBER+STRICT", "indicator", "indicator--2"),
            *("by", "ngo-a", "REVOKED", "Lure"),
        ],
    ]


def test_subscribe_since_skips_older_deliveries(fake: FakeExchange) -> None:
    day = 86_400
    fake.batches = [
        pb.SubscribeResponse(
            deliveries=[delivery(1), delivery(2, 1_714_557_600 + day), delivery(3)],
            cursor="c3",
        ),
        pb.SubscribeResponse(deliveries=[delivery(4, 1_714_557_600 + 2 * day)], cursor="c4"),
    ]
    result = CliRunner().invoke(subscribe, ["--since", "2024-05-02T10:00:00Z", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["cursor"] for line in result.stdout.splitlines()] == ["c2", "c4"]
    assert fake.requests[0].from_beginning
    result = CliRunner().invoke(subscribe, ["--since", "May 2nd"])
    assert result.exit_code == 2
    assert "is not an ISO 8601 time" in result.stderr


def test_subscribe_cursor_file_resumes(fake: FakeExchange, tmp_path: Path) -> None:
    cursor_file = tmp_path / "feed.cursor"
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(1), delivery(2)], cursor="c2")]
    args = ["--cursor-file", str(cursor_file), "--from-beginning", "--limit", "2"]
    result = CliRunner().invoke(subscribe, args)
    assert result.exit_code == 0, result.output
    assert cursor_file.read_text() == "c2\n"
    assert fake.requests[0].from_beginning
    assert list(tmp_path.iterdir()) == [cursor_file]  # no temporary file left behind
    result = CliRunner().invoke(subscribe, [*args[:3], "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert fake.requests[1].cursor == "c2"
    assert not fake.requests[1].from_beginning


def test_subscribe_cursor_file_written_after_each_delivery(
    fake: FakeExchange, tmp_path: Path
) -> None:
    cursor_file = tmp_path / "feed.cursor"
    fake.batches = [
        pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1"),
        pb.SubscribeResponse(deliveries=[delivery(2)], cursor="c2"),
    ]
    fake.hold_open = True
    seen: list[str] = []

    def spy(self: Any, cursor: str | None) -> None:
        original(self, cursor)
        seen.append(cursor_file.read_text())

    original = subscribe_module._CursorFile.write
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subscribe_module._CursorFile, "write", spy)
        result = CliRunner().invoke(subscribe, ["--cursor-file", str(cursor_file), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert seen[:2] == ["c1\n", "c2\n"]


def test_subscribe_cursor_and_cursor_file_exclude_each_other(
    fake: FakeExchange, tmp_path: Path
) -> None:
    result = CliRunner().invoke(subscribe, ["--cursor", "c1", "--cursor-file", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "--cursor and --cursor-file exclude each other" in result.stderr


def test_subscribe_retries_its_first_connection_quietly(fake: FakeExchange) -> None:
    fake.unavailable_first = 2
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")]
    result = CliRunner().invoke(subscribe, ["--from-beginning", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cursor"] == "c1"
    # Within --connect-timeout: no alarm (a failure would be one line, then exit 1).
    assert result.stderr == ""
    assert len(fake.requests) == 3


def test_subscribe_reconnects_and_says_so(fake: FakeExchange) -> None:
    fake.scripted = [
        ([pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")], "connection lost", False),
        ([], "the exchange is restarting", False),
    ]
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(2)], cursor="c2")]
    result = CliRunner().invoke(subscribe, ["--from-beginning", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["cursor"] for line in result.stdout.splitlines()] == ["c1", "c2"]
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "reconnecting (attempt 1)",
        "reconnecting (attempt 2)",
    ]
    assert "connection lost" in lines[0] and "the exchange is restarting" in lines[1]
    assert [r.cursor for r in fake.requests] == ["", "c1", "c1"]


def test_subscribe_resumes_silently_when_the_exchange_asks(fake: FakeExchange) -> None:
    fake.scripted = [
        (
            [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")],
            "your communities changed, ...; resume from your last cursor",
            True,
        )
    ]
    fake.batches = [pb.SubscribeResponse(deliveries=[delivery(2)], cursor="c2")]
    result = CliRunner().invoke(subscribe, ["--from-beginning", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["cursor"] for line in result.stdout.splitlines()] == ["c1", "c2"]
    assert result.stderr == ""
    assert [r.cursor for r in fake.requests] == ["", "c1"]
    # With --no-reconnect it ends, saying why (not "cannot reach").
    fake.scripted = [
        (
            [pb.SubscribeResponse(deliveries=[delivery(1)], cursor="c1")],
            "your communities changed; resume from your last cursor",
            True,
        )
    ]
    result = CliRunner().invoke(subscribe, ["--no-reconnect"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["cursor"] == "c1"
    assert result.stderr == (
        "exchange: the exchange ended the stream: your communities changed;"
        " resume from your last cursor\n"
    )


def shown(path: Path) -> str:
    """How the summary names a file: as given, or, found in the directory ``corpus``
    given on the command line, from there."""
    root = next((p for p in path.parents if p.name == "corpus"), None)
    return str(path) if root is None else str(path.relative_to(root.parent))
