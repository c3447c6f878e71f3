"""The partner commands of ``exchange`` (submit, subscribe, sighting, revoke, get)
and the SDK examples in clients/python/examples, through the installed command and
real server processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, free_port, indicator, wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "clients" / "python" / "examples"


def run(
    *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``exchange ARGS`` and check its exit code."""
    proc = subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    if proc.returncode != code:
        raise AssertionError(
            f"exchange {' '.join(args)} -> {proc.returncode} (expected {code}):"
            f"\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def add_partner(data: Path, name: str, sector: str, *extra: str) -> dict[str, str]:
    where = ["--data-dir", str(data), "--json"]
    out = run("partner", "add", "--name", name, "--sector", sector, *where, *extra)
    doc = orjson.loads(out.stdout)
    return {str(k): str(v) for k, v in doc.items()}


def rows(text: str) -> list[list[str]]:
    return [
        re.split(r"\s{2,}", line.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("\u2500")
    ]


def write_bundle(path: Path, objects: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(bundle(objects)))
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data")
    yield srv
    srv.stop()


def as_partner(srv: ServerProcess, partner: dict[str, str]) -> list[str]:
    return ["--target", srv.target, "--token", partner["token"]]


def test_submit_directory_summary_and_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
    me = ngo["identity_id"]
    corpus = tmp_path / "corpus"
    first = write_bundle(corpus / "2026-10.json", [indicator(me, n=n) for n in range(3)])
    nested = write_bundle(
        corpus / "november" / "leads.json",
        [indicator(me, n=10), indicator(me, n=11, confidence=250)],
    )
    broken = corpus / "zz-broken.json"
    broken.write_text('{"type": "bundle", "objects": [')
    (corpus / "README.txt").write_text("not submitted")

    out = run("submit", str(corpus), *as_partner(server, ngo), code=2)
    table = rows(out.stdout)
    # Not a terminal: a plain line per file, then the rejected objects.
    assert table[0] == [f"{shown(first)}: 3 accepted, 0 duplicate, 0 rejected"]
    assert table[1] == [f"{shown(nested)}: 1 accepted, 0 duplicate, 1 rejected"]
    assert table[2][0].startswith(
        f"{shown(broken)}: 0 accepted, 0 duplicate, 0 rejected, refused: "
    )
    assert table[-1] == ["3 files: 4 accepted, 0 duplicate, 1 rejected, 1 refused"]
    nested_rejection = table[table.index(["Rejected objects:"]) + 2]
    assert nested_rejection[:3] == [
        shown(nested),
        orjson.loads(nested.read_text())["objects"][1]["id"],
        "confidence",
    ]
    assert "Traceback" not in out.stderr

    # Again: everything already held is a duplicate.
    again = run("submit", str(first), *as_partner(server, ngo))
    assert again.stdout == f"{first}: 0 accepted, 3 duplicate, 0 rejected\n"


def test_subscribe_cursor_file_resumes_without_repeats(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
    platform = add_partner(data, "Kestrel Social", "technology")
    objects = [indicator(ngo["identity_id"], n=n, tlp=Tlp.GREEN) for n in range(5)]
    run("submit", str(write_bundle(tmp_path / "a.json", objects[:3])), *as_partner(server, ngo))

    cursor_file = tmp_path / "feed.cursor"
    feed = [*as_partner(server, platform), "--cursor-file", str(cursor_file), "--format", "jsonl"]
    got: list[str] = []
    out = run("subscribe", *feed, "--from-beginning", "--limit", "2")
    got += [orjson.loads(line)["object_id"] for line in out.stdout.splitlines()]
    assert cursor_file.read_text().strip() == orjson.loads(out.stdout.splitlines()[-1])["cursor"]
    out = run("subscribe", *feed, "--from-beginning", "--limit", "1")
    got += [orjson.loads(line)["object_id"] for line in out.stdout.splitlines()]
    run("submit", str(write_bundle(tmp_path / "b.json", objects[3:])), *as_partner(server, ngo))
    out = run("subscribe", *feed, "--limit", "2", "--format", "pretty")
    pretty = out.stdout.splitlines()
    assert len(pretty) == 2
    assert all("TLP:GREEN" in line and "by " in line for line in pretty)
    got += [line.split()[4] for line in pretty]
    assert got == [o["id"] for o in objects]


def test_sighting_revoke_and_get(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "data"
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
    platform = add_partner(data, "Kestrel Social", "technology")
    lure = indicator(ngo["identity_id"], n=1, tlp=Tlp.GREEN)
    run("submit", str(write_bundle(tmp_path / "a.json", [lure])), *as_partner(server, ngo))

    # The platform saw it: the sighting travels back to the NGO.
    out = run(
        "sighting",
        lure["id"],
        *("--count", "4", "--first-seen", "2026-11-01", "--tlp", "green"),
        *as_partner(server, platform),
    )
    sighting_id, rest = out.stdout.strip().split(": ", 1)
    assert sighting_id.startswith("sighting--")
    assert rest.startswith(f"sighting of {lure['id']} recorded (version ")
    seen = orjson.loads(run("get", sighting_id, *as_partner(server, ngo)).stdout)
    assert (seen["sighting_of_ref"], seen["count"]) == (lure["id"], 4)

    # Only its creator may revoke it.
    out = run("revoke", lure["id"], *as_partner(server, platform), code=2)
    assert out.stderr.startswith("exchange: revocation rejected: ")
    assert out.stderr.count("\n") == 1
    out = run("revoke", lure["id"], *as_partner(server, ngo), "--json")
    record = orjson.loads(out.stdout)
    assert (record["object_id"], record["outcome"]) == (lure["id"], "accepted")
    latest = orjson.loads(run("get", lure["id"], *as_partner(server, platform)).stdout)
    assert latest["revoked"] is True
    older = run("get", lure["id"], "--version", lure["modified"], *as_partner(server, platform))
    assert "revoked" not in orjson.loads(older.stdout)

    missing = "indicator--00000000-0000-4000-8000-000000000000"
    out = run("get", missing, *as_partner(server, ngo), code=1)
    assert out.stderr == f"exchange: {missing}: not found (or not visible to you)\n"


# -- subscribe: the first connection, a lost one, and a resume the exchange asks for ---


class Feed:
    """A running ``exchange subscribe``: its stdout lines as they come, its stderr in
    a file (read at the end or on demand)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / f"subscribe-{time.monotonic_ns()}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [EXCHANGE, "subscribe", "--format", "jsonl", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def ids(self) -> list[str]:
        return [orjson.loads(line)["object_id"] for line in list(self.lines)]

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, count: int, what: str, timeout_s: float = 60) -> None:
        wait_until(
            lambda: len(self.lines) >= count or self.proc.poll() is not None, timeout_s, what
        )
        assert len(self.lines) >= count, f"exited {self.proc.poll()}: {self.stderr()}"

    def finish(self, timeout_s: float = 60) -> int:
        """Its exit status, once it exited by itself (--limit)."""
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill it if it still runs; close what the test opened for it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def test_subscribe_gives_up_on_an_exchange_it_never_reached() -> None:
    target = f"127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    out = run("subscribe", "--target", target, "--token", "t", "--connect-timeout", "2", code=1)
    elapsed = time.monotonic() - started
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"exchange: cannot reach the exchange at {target}: ")
    assert out.stderr.endswith("(gave up after 2 s; is the server running?)\n")
    # It kept trying up to the bound (less the last attempt's grace), not forever.
    assert 1.5 <= elapsed < 30, elapsed


def test_subscribe_keeps_reconnecting_once_established(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
    platform = add_partner(data, "Kestrel Social", "technology")
    objects = [indicator(ngo["identity_id"], n=n, tlp=Tlp.GREEN) for n in range(4)]
    run("submit", str(write_bundle(tmp_path / "a.json", objects[:2])), *as_partner(server, ngo))
    feed = Feed(
        tmp_path,
        *as_partner(server, platform),
        *("--from-beginning", "--limit", "4", "--connect-timeout", "1"),
    )
    try:
        feed.wait_for(2, "the first deliveries")
        server.kill()
        lost = time.monotonic()
        # Down for three times --connect-timeout: an established feed does not give up.
        wait_until(
            lambda: feed.proc.poll() is not None or time.monotonic() - lost > 3,
            30,
            "three seconds of the exchange being down",
        )
        assert feed.proc.poll() is None, feed.stderr()
        assert "reconnecting (attempt 1)" in feed.stderr()
        server = ServerProcess(data, port=server.port)
        run("submit", str(write_bundle(tmp_path / "b.json", objects[2:])), *as_partner(server, ngo))
        assert feed.finish() == 0, feed.stderr()
    finally:
        server.stop()
        feed.stop()
    assert feed.ids() == [o["id"] for o in objects]
    assert all(line.startswith("reconnecting (attempt ") for line in feed.stderr().splitlines())


def test_subscribe_follows_a_change_of_communities_silently(
    server: ServerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    run("community", "add", "sea-taskforce", "--data-dir", str(data))
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit", "--community", "sea-taskforce")
    platform = add_partner(data, "Kestrel Social", "technology")
    me, shared = ngo["identity_id"], ["--community", "sea-taskforce"]

    def submit(name: str, objects: list[dict[str, Any]], *extra: str) -> list[str]:
        run("submit", str(write_bundle(tmp_path / name, objects)), *extra, *as_partner(server, ngo))
        return [o["id"] for o in objects]

    public = submit("public.json", [indicator(me, n=n, tlp=Tlp.GREEN) for n in range(3)])
    members = submit(
        "amber.json", [indicator(me, n=10 + n, tlp=Tlp.AMBER) for n in range(2)], *shared
    )
    feed = Feed(tmp_path, *as_partner(server, platform), "--from-beginning", "--limit", "9")
    try:
        feed.wait_for(3, "the public objects")
        run(
            "community", "join", "sea-taskforce",
            "--partner", platform["partner_id"], "--data-dir", str(data),
        )  # fmt: skip
        # The exchange ends the stream to add the community's topic; the feed reopens
        # it from its cursor: the community's earlier objects arrive...
        feed.wait_for(5, "the community's objects")
        later = submit("later.json", [indicator(me, n=20 + n, tlp=Tlp.GREEN) for n in range(2)])
        later += submit(
            "later-amber.json", [indicator(me, n=30 + n, tlp=Tlp.AMBER) for n in range(2)], *shared
        )
        # ...and so do later ones, each once.
        assert feed.finish() == 0, feed.stderr()
    finally:
        feed.stop()
    got = feed.ids()
    assert got[:3] == public
    assert sorted(got) == sorted(public + members + later), got
    assert feed.stderr() == ""  # a normal event: no "reconnecting" alarm


# -- the SDK examples ------------------------------------------------------------------


def example(
    name: str, *args: str, srv: ServerProcess, token: str, code: int = 0, cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXCHANGE_TARGET": srv.target, "EXCHANGE_TOKEN": token}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=cwd,
    )
    if proc.returncode != code:
        raise AssertionError(
            f"{name} {' '.join(args)} -> {proc.returncode} (expected {code}):"
            f"\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_examples_run_against_a_real_exchange(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "data"
    run("community", "add", "sea-taskforce", "--data-dir", str(data))
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit", "--community", "sea-taskforce")
    platform = add_partner(data, "Kestrel Social", "technology", "--community", "sea-taskforce")
    outsider = add_partner(data, "Elsewhere Inc", "technology")

    # The NGO pushes its hotline's numbers and wallets, TLP:AMBER to the community.
    hotline = tmp_path / "hotline.csv"
    hotline.write_text(
        "kind,value,first_seen,note\n"
        "phone,+15550104477,2026-11-02T09:30:00Z,caller posing as a modelling agency\n"
        "wallet,bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh,2026-11-03T17:05:00Z,visa fee\n"
        "phone,+15550109999,2026-11-04,\n"
    )
    args = [str(hotline), "--community", "sea-taskforce", "--batch-size", "2"]
    out = example("ngo_hotline.py", *args, srv=server, token=ngo["token"], cwd=tmp_path)
    assert out.stdout.splitlines()[0] == "3 accepted, 0 duplicate, 0 rejected"
    assert "3/3 sent" in out.stderr
    out = example("ngo_hotline.py", *args, srv=server, token=ngo["token"], cwd=tmp_path)
    assert out.stdout.splitlines()[0] == "0 accepted, 3 duplicate, 0 rejected"

    # The platform watches the feed for the values its users reported.
    values = tmp_path / "reported.txt"
    values.write_text(
        "# reported by users\n+15550104477\nBC1QXY2KGDYGJRSQTZQ2N0YRF2493P83KKFJHX0WLH\n"
    )
    matches = tmp_path / "matches.jsonl"
    feed = ["--values", str(values), "--matches", str(matches), "--cursor-file", "feed.cursor"]
    example(
        "platform_feed.py", *feed, "--limit", "2", srv=server, token=platform["token"], cwd=tmp_path
    )
    first = [orjson.loads(line) for line in matches.read_text().splitlines()]
    assert [m["value"] for m in first] == [
        "+15550104477",
        "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh",
    ]
    assert {m["tlp"] for m in first} == {"amber"}
    assert (tmp_path / "feed.cursor").exists()
    # Started again: it continues with the third indicator, no repeats.
    out = example(
        "platform_feed.py", *feed, "--limit", "1", srv=server, token=platform["token"], cwd=tmp_path
    )
    assert "1 indicators read, 0 matches" in out.stderr
    assert len(matches.read_text().splitlines()) == 2

    # TLP:AMBER to the community: an outsider does not see them.
    lure_id = first[0]["indicator_id"]
    run("get", lure_id, "--target", server.target, "--token", outsider["token"], code=1)

    # The NGO audits its indicator: who received it, proven against a signed checkpoint.
    out = example(
        "auditor.py", lure_id, "--wait", "60", srv=server, token=ngo["token"], cwd=tmp_path
    )
    lines = out.stdout.splitlines()
    assert any(" submit " in line for line in lines)
    assert re.fullmatch(r"(\d+) of \1 entries proven in the signed log, 0 failed", lines[-1])


def shown(path: Path) -> str:
    """How the summary names a file: as given, or, found in the directory ``corpus``
    given on the command line, from there."""
    root = next((p for p in path.parents if p.name == "corpus"), None)
    return str(path) if root is None else str(path.relative_to(root.parent))


def test_auditor_example_says_what_to_install_without_cryptography(tmp_path: Path) -> None:
    """On the SDK's plain install (no [verify] extra), auditor.py names the extra in one
    line instead of an ImportError traceback."""
    auditor = str(EXAMPLES / "auditor.py")
    without_cryptography = (
        "import runpy, sys; sys.modules['cryptography'] = None;"  # import raises ImportError
        f" sys.argv = ['auditor.py', 'indicator--x']; runpy.run_path({auditor!r},"
        " run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", without_cryptography],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "pip install 'exchange-client[verify]'" in proc.stderr
