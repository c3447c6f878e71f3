"""A newcomer's first try, driven through the installed ``exchange`` command and
the SDK against a real server process, on both buses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import ExchangeClient

from exchange.model import Tlp
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import free_port, indicator, partner_export, tlp_of
from tests.kcat import kcat_read

HARBOR_LIGHT = "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44"
KESTREL = "identity--a3a9de07-2aff-5a6d-b411-cac72225a4e7"


def run(
    *args: str, stdin: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [EXCHANGE, *args], input=stdin, capture_output=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exchange {' '.join(args)} -> {proc.returncode}: {proc.stderr.decode()}"
        )
    return proc


@pytest.fixture(params=["local", pytest.param("kafka", marks=pytest.mark.kafka)])
def bus(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    if request.param == "local":
        return "local", []
    bootstrap = request.getfixturevalue("tansu")
    prefix = f"e2e{os.getpid()}{free_port()}"
    return bootstrap, [
        "--kafka-bootstrap",
        bootstrap,
        "--no-kafka-idempotence",
        "--topic-prefix",
        prefix,
    ]


@pytest.fixture
def server(tmp_path: Path, bus: tuple[str, list[str]]) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data", *bus[1])
    yield srv
    srv.stop()


def add_partner(data_dir: Path, name: str, sector: str, identity: str) -> dict[str, str]:
    out = run(
        "partner",
        "add",
        "--name",
        name,
        "--sector",
        sector,
        "--identity-id",
        identity,
        "--data-dir",
        str(data_dir),
        "--json",
    )
    doc = orjson.loads(out.stdout)
    assert set(doc) == {"partner_id", "identity_id", "token"}
    assert doc["identity_id"] == identity
    return {str(k): str(v) for k, v in doc.items()}


def test_first_try(tmp_path: Path, server: ServerProcess, bus: tuple[str, list[str]]) -> None:
    data = tmp_path / "data"
    # Partners are added while the server runs, against the same data directory.
    ngo = add_partner(data, "Harbor Light Alliance", "non-profit", HARBOR_LIGHT)
    platform = add_partner(data, "Kestrel Social", "technology", KESTREL)
    # Tokens are shown once and kept only as hashes.
    stored = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    assert ngo["token"].encode() not in stored and platform["token"].encode() not in stored

    export = partner_export(HARBOR_LIGHT, "Harbor Light Alliance", indicators=40)
    hostile = indicator(
        HARBOR_LIGHT, n=77, tlp=Tlp.GREEN, name="x'); DROP TABLE objects;-- \u202e <script>"
    )
    good = tmp_path / "harbor-light-bulk.json"
    good.write_bytes(orjson.dumps(export))
    hostile_file = tmp_path / "hostile-text.json"
    hostile_file.write_bytes(
        orjson.dumps(
            {
                "type": "bundle",
                "id": export["id"].replace("bundle--", "bundle--"),
                "objects": [hostile],
            }
        )
    )
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(orjson.dumps(export)[:500])
    spoofed = tmp_path / "spoofed.json"
    spoofed.write_bytes(orjson.dumps({"type": "bundle", "objects": [indicator(KESTREL)]}))

    auth = ["--target", server.target, "--token", ngo["token"]]
    out = run("submit", str(good), str(hostile_file), *auth)
    assert b"0 rejected" in out.stdout

    for bad in (truncated, spoofed):
        refused = run("submit", str(bad), *auth, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert bad.name.encode() in refused.stdout
    assert b"created_by_ref" in run("submit", str(spoofed), *auth, check=False).stdout
    assert server.serving()

    objects = [*export["objects"], hostile]
    shared = [o for o in objects if tlp_of(o) in (Tlp.CLEAR, Tlp.GREEN)]
    lines = run(
        "subscribe",
        "--from-beginning",
        "--limit",
        str(len(shared)),
        "--target",
        server.target,
        "--token",
        platform["token"],
    ).stdout.splitlines()
    got = [orjson.loads(line) for line in lines]
    assert sorted(g["object_id"] for g in got) == sorted(o["id"] for o in shared)
    assert {g["tlp"] for g in got} <= {"clear", "green"}
    # Hostile text is data: delivered as sent.
    assert next(g["object"] for g in got if g["object_id"] == hostile["id"]) == hostile

    # The SDK sees the same feed; a partner receives all its own objects.
    with ExchangeClient(server.target, token=ngo["token"]) as sdk:
        sub = sdk.subscribe(from_beginning=True)
        own = [d.object_id for _, d in zip(range(len(objects)), sub, strict=False)]
        sub.cancel()
    assert sorted(own) == sorted(o["id"] for o in objects)

    bootstrap = bus[0]
    if bootstrap != "local":
        prefix = bus[1][bus[1].index("--topic-prefix") + 1]
        green = [o for o in shared if tlp_of(o) is Tlp.GREEN]
        records = kcat_read(bootstrap, f"{prefix}.green", expect=len(green))
        assert sorted(r["key"] for r in records) == sorted(o["id"] for o in green)
        headers = records[0]["headers"]
        assert _header(headers, "tlp") == "green"
        assert _header(headers, "submitter") == ngo["partner_id"]
        assert _header(headers, "stix-type") in {"indicator", "relationship"}


def _header(headers: Any, name: str) -> str:
    if isinstance(headers, dict):
        return str(headers[name])
    pairs = list(headers)
    if pairs and isinstance(pairs[0], str):  # kcat -J: flat [k, v, k, v, ...]
        return str(dict(zip(pairs[::2], pairs[1::2], strict=True))[name])
    return str(dict(pairs)[name])


def test_help_explains() -> None:
    for args in ([], ["serve"], ["partner", "add"], ["submit"], ["subscribe"]):
        out = run(*args, "--help").stdout.decode()
        assert ("Usage:" in out and "Example" in out) or args == []


def test_sdk_installs_alone(tmp_path: Path) -> None:
    """The partner SDK installs into a clean environment without the server's dependencies."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    sdk = Path(__file__).resolve().parents[2] / "clients" / "python"
    src = tmp_path / "sdk"
    shutil.copytree(sdk, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(src)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    probe = (
        "import importlib.util, exchange_client;"
        "print(exchange_client.ExchangeClient.__name__);"
        "print([m for m in ('aiokafka', 'stix2', 'exchange') if importlib.util.find_spec(m)])"
    )
    out = subprocess.run(
        [str(py), "-c", probe],
        check=True,
        capture_output=True,
        timeout=60,
        text=True,
        cwd=tmp_path,  # not the repository, whose folders would be importable
    )
    assert out.stdout.split() == ["ExchangeClient", "[]"]


def test_interrupt_stops_the_server_cleanly(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it, so the
    validation workers get it too) ends `exchange serve` with exit code 0, and
    what was accepted is still there after a restart."""
    data = tmp_path / "data"
    srv = ServerProcess(data)
    export = partner_export(HARBOR_LIGHT, "Harbor Light Alliance")
    try:
        ngo = add_partner(data, "Harbor Light Alliance", "non-profit", HARBOR_LIGHT)
        with ExchangeClient(srv.target, token=ngo["token"]) as sdk:
            assert sdk.submit(export).ok
        os.killpg(srv.proc.pid, signal.SIGINT)
        assert srv.proc.wait(30) == 0, srv.log.read_text()
        assert "Traceback" not in srv.log.read_text()
    finally:
        srv.stop()
    again = ServerProcess(data)
    try:
        with ExchangeClient(again.target, token=ngo["token"]) as sdk:
            sub = sdk.subscribe(from_beginning=True)
            own = [d.object_id for _, d in zip(export["objects"], sub, strict=False)]
            sub.cancel()
        assert sorted(own) == sorted(o["id"] for o in export["objects"])
    finally:
        again.stop()


def test_a_second_server_on_a_taken_port_refuses_to_start(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "one")
    try:
        second = subprocess.run(
            [EXCHANGE, "serve", "--data-dir", str(tmp_path / "two"), "--listen", first.target],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        # One line that says what to do, nothing from gRPC's core, nothing created.
        assert second.stderr.decode() == (
            f"exchange: cannot listen on {first.target}: the address is in use (another"
            " exchange serve?); choose another with --listen HOST:PORT (or EXCHANGE_LISTEN,"
            " or listen in --config)\n"
        )
        assert not (tmp_path / "two").exists()
        assert first.serving()
    finally:
        first.stop()
