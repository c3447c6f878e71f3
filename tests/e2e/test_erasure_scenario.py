"""Issue 17's acceptance scenario, from the installed ``exchange`` command against a real
server process, on both buses: a hotline shares a phone number, a platform and a
ministry receive it, the hotline erases it with reason victim-data. Each recipient gets
exactly one notice; a replay, a look-up, TAXII, the store's and bus's files, the server's
log, its metrics and (Kafka) every topic read by an independent client after compaction
hold no copy of the number; the audit log still verifies, and an auditor shows when it
was shared, to whom, and when it was erased, without the number appearing anywhere."""

from __future__ import annotations

import base64
import functools
import os
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator, wait_until

# The number: distinctive, so that finding it anywhere means a copy was left.
NUMBER = "+15550199734"
LEAD = "indicator--0b6b9a5e-1c1a-4f3e-9d55-8f2f4b1e7a10"


def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == code, f"exchange {' '.join(args)} -> {proc.returncode}: {proc}"
    return proc


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    if request.param == "local":
        return "", []
    bootstrap: str = request.getfixturevalue("tansu")
    prefix = f"er{os.getpid()}x{free_port()}"
    return bootstrap, [
        "--kafka-bootstrap",
        bootstrap,
        "--no-kafka-idempotence",
        "--topic-prefix",
        prefix,
    ]


@pytest.fixture
def server(tmp_path: Path, bus: tuple[str, list[str]]) -> Iterator[ServerProcess]:
    extra = [*bus[1], "--taxii-listen", f"127.0.0.1:{free_port()}"]
    extra += ["--metrics-listen", f"127.0.0.1:{free_port()}"]
    srv = ServerProcess(tmp_path / "data", *extra)
    yield srv
    srv.stop()


def add_partner(data: Path, name: str, kind: str, sector: str) -> dict[str, str]:
    out = run(
        "partner", "add", "--name", name, "--kind", kind, "--sector", sector,
        "--data-dir", str(data), "--json",
    )  # fmt: skip
    return {str(k): str(v) for k, v in orjson.loads(out.stdout).items()}


def serve_option(server: ServerProcess, flag: str) -> str:
    args = server.proc.args
    assert isinstance(args, list)
    return str(args[args.index(flag) + 1])


def taxii_get(server: ServerProcess, partner: dict[str, str], path: str) -> bytes:
    auth = base64.b64encode(f"{partner['partner_id']}:{partner['token']}".encode()).decode()
    url = f"http://{serve_option(server, '--taxii-listen')}{path}"
    request = urllib.request.Request(
        url,
        headers={"Authorization": f"Basic {auth}", "Accept": "application/taxii+json;version=2.1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return bytes(answer.read())
    except urllib.error.HTTPError as err:
        return bytes(err.read())


def subscriber(
    server: ServerProcess, partner: dict[str, str], out: Path
) -> subprocess.Popen[bytes]:
    """``exchange subscribe`` from the beginning, JSON lines to ``out`` (its errors to
    ``out``.err), until it has printed the lead and its notice."""
    with out.open("wb") as stdout, out.with_suffix(".err").open("wb") as stderr:
        # The child keeps its own copies of the descriptors.
        return subprocess.Popen(
            [
                EXCHANGE, "subscribe", "--target", server.target, "--from-beginning",
                "--format", "json", "--limit", "2",
            ],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "EXCHANGE_TOKEN": partner["token"]},
        )  # fmt: skip


def has_lines(path: Path, count: int) -> bool:
    return len(lines(path)) >= count


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_a_hotline_erases_a_victims_number_from_everyone(
    tmp_path: Path, server: ServerProcess, bus: tuple[str, list[str]]
) -> None:
    data = tmp_path / "data"
    hotline = add_partner(data, "Harbor Light Hotline", "ngo", "non-profit")
    platform = add_partner(data, "Kestrel Social", "tech", "technology")
    ministry = add_partner(data, "Labour Ministry", "government", "government")

    feeds = {p["partner_id"]: tmp_path / f"{p['partner_id']}.jsonl" for p in (platform, ministry)}
    procs = [subscriber(server, p, feeds[p["partner_id"]]) for p in (platform, ministry)]
    try:
        lead = indicator(
            hotline["identity_id"],
            tlp=Tlp.GREEN,
            object_id=LEAD,
            name="Recruiter's phone",
            pattern=f"[x-phone-number:value = '{NUMBER}']",
        )
        lead_file = tmp_path / "lead.json"
        lead_file.write_bytes(orjson.dumps(bundle([lead])))
        auth = ["--target", server.target, "--token", hotline["token"]]
        run("submit", str(lead_file), *auth)
        for feed in feeds.values():
            wait_until(functools.partial(has_lines, feed, 1), 30, f"the lead in {feed}")
            assert NUMBER in lines(feed)[0]["object"]["pattern"]

        erased = orjson.loads(run("erase", LEAD, "--reason", "victim-data", "--json", *auth).stdout)
        assert (erased["versions"], erased["reason"]) == ([lead["modified"]], "victim-data")
        for proc, feed in zip(procs, feeds.values(), strict=True):
            assert proc.wait(60) == 0, feed.with_suffix(".err").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    # Each recipient: the lead, then exactly one notice (and nothing else).
    for feed in feeds.values():
        got = lines(feed)
        assert len(got) == 2
        notice = got[1]["erased"]
        assert got[1]["object_id"] == LEAD
        assert (notice["versions"], notice["reason"]) == ([lead["modified"]], "victim-data")
        assert NUMBER not in orjson.dumps(got[1]).decode()

    # Gone from look-ups, replays and TAXII.
    run("get", LEAD, "--target", server.target, "--token", platform["token"], code=1)
    marker = indicator(hotline["identity_id"], tlp=Tlp.GREEN, n=5)
    with ExchangeClient(server.target, token=hotline["token"]) as c:
        assert c.submit(bundle([marker])).ok
    replayed = replay_until(server, ministry, {str(marker["id"]), LEAD})
    assert all(NUMBER.encode() not in d.object_json for d in replayed)
    assert [d.object_id for d in replayed if d.erased is None] == [marker["id"]]
    assert [d.object_id for d in replayed if d.erased is not None] == [LEAD]
    collections = orjson.loads(taxii_get(server, platform, "/exchange/collections/"))
    for collection in collections["collections"]:
        page = taxii_get(server, platform, f"/exchange/collections/{collection['id']}/objects/")
        assert NUMBER.encode() not in page and LEAD.encode() not in page
        one = taxii_get(
            server, platform, f"/exchange/collections/{collection['id']}/objects/{LEAD}/"
        )
        assert NUMBER.encode() not in one

    # The auditor: intact, and the story without the number.
    run("audit", "verify", "--data-dir", str(data))
    story = [
        orjson.loads(line)
        for line in run(
            "audit", "log", "--object", LEAD, "--data-dir", str(data), "--format", "json"
        ).stdout.splitlines()
    ]
    actions = [(e["action"], e["actor"]) for e in story]
    assert ("submit", hotline["partner_id"]) in actions
    assert ("erase", hotline["partner_id"]) in actions
    for recipient in (platform, ministry):
        assert ("deliver", recipient["partner_id"]) in actions
        assert ("erase.notice", recipient["partner_id"]) in actions
    assert NUMBER not in orjson.dumps(story).decode()
    exported = run("audit", "export", "--data-dir", str(data)).stdout
    assert LEAD in exported and NUMBER not in exported

    # Nothing left anywhere the exchange writes: its files, its log, its metrics, its topics.
    metrics_url = f"http://{serve_option(server, '--metrics-listen')}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=30) as answer:
        assert NUMBER.encode() not in answer.read()
    server.stop()  # its log is complete
    holding = [
        str(path.relative_to(tmp_path))
        for path in tmp_path.rglob("*")
        if path.is_file() and path.suffix not in {".jsonl", ".err"} and path != lead_file
        and NUMBER.encode() in path.read_bytes()
    ]  # fmt: skip
    assert holding == []
    if bus[0]:
        assert_no_copy_on_kafka(bus[0], serve_option(server, "--topic-prefix"), data)


def replay_until(server: ServerProcess, partner: dict[str, str], ids: set[str]) -> list[Any]:
    """Deliveries of a fresh subscription from the beginning, until each of ``ids`` came
    (on Kafka, records of different keys may come in any order)."""
    got: list[Any] = []
    with ExchangeClient(server.target, token=partner["token"]) as c:
        sub = c.subscribe(from_beginning=True)
        timer = threading.Timer(30.0, sub.cancel)
        timer.start()
        try:
            for delivery in sub:
                got.append(delivery)
                if ids <= {d.object_id for d in got}:
                    break
        finally:
            timer.cancel()
            sub.cancel()
    assert ids <= {d.object_id for d in got}
    return got


def assert_no_copy_on_kafka(bootstrap: str, prefix: str, data: Path) -> None:
    """Every record of every topic the relay and the audit mirror wrote, read with kcat,
    then compacted as Kafka's log cleaner does (the last record of each key stays, and a
    key whose last record is a tombstone keeps nothing): no copy of the number."""
    import sqlite3  # noqa: PLC0415

    from tests.kcat import kcat_read  # noqa: PLC0415

    conn = sqlite3.connect(data / "exchange.sqlite3")
    try:
        ends = conn.execute("SELECT topic, sum(next_offset) FROM relay_positions GROUP BY topic")
        counts = {str(t): int(n) for t, n in ends}
        (audit,) = conn.execute("SELECT next_index FROM audit_mirror").fetchone()
    finally:
        conn.close()
    assert counts
    for topic, count in counts.items():
        records = kcat_read(bootstrap, f"{prefix}.{topic}", expect=count)
        compacted: dict[Any, Any] = {}
        for record in records:
            compacted.pop(record["key"], None)
            if record["value"] is not None:
                compacted[record["key"]] = record
        assert all(NUMBER not in orjson.dumps(r).decode() for r in compacted.values()), topic
        # Headers are kept with every record, tombstones too: none may carry it.
        assert all(NUMBER not in orjson.dumps(r["headers"]).decode() for r in records), topic
    if audit:
        entries = kcat_read(bootstrap, f"{prefix}.audit", expect=int(audit))
        assert all(NUMBER not in orjson.dumps(r).decode() for r in entries)
