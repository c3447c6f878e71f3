"""``exchange audit`` through the installed command: reviewing who submitted and
who received an object, verifying the log (through a server and offline on the
data directory), exporting it with proofs, catching one changed byte, and keeping
checkpoints that catch a log cut short or rewritten with its checkpoints deleted."""

from __future__ import annotations

import asyncio
import base64
import csv
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from exchange_client import Checkpoint

from exchange.audit.entries import Action, Event
from exchange.audit.signer import Signer
from exchange.config import Settings
from exchange.model import Tlp
from exchange.store import Store, open_store
from tests import rfc6962
from tests.e2e.process import EXCHANGE, ServerProcess
from tests.helpers import bundle, indicator, settings_for, wait_until
from tests.tampering import Intruder

EXIT_NOT_INTACT = 3


def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``exchange ARGS`` and check its exit code."""
    proc = subprocess.run(
        [EXCHANGE, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != code:
        raise AssertionError(
            f"exchange {' '.join(args)} -> {proc.returncode} (expected {code}):"
            f"\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def add_partner(data: Path, name: str, sector: str, *extra: str) -> dict[str, str]:
    where = ["--data-dir", str(data), "--json"]
    out = run("partner", "add", "--name", name, "--sector", sector, *where, *extra)
    doc = orjson.loads(out.stdout)
    return {str(k): str(v) for k, v in doc.items()}


def check_export(lines: list[dict[str, Any]], public_key: str | None = None) -> Checkpoint:
    """The export's checkpoint verifies, and every entry's proof leads to its root
    (checked with the independent RFC 6962 code)."""
    head, entries = lines[0], lines[1:]
    assert head["type"] == "checkpoint"
    checkpoint = Checkpoint.parse(
        base64.b64decode(head["note"]), base64.b64decode(head["signature"])
    )
    checkpoint.verify(public_key or head["public_key"])
    assert (checkpoint.tree_size, checkpoint.root_hash) == (
        head["tree_size"],
        base64.b64decode(head["root_hash"]),
    )
    for entry in entries:
        assert entry["type"] == "entry"
        data = base64.b64decode(entry["data"])
        leaf = base64.b64decode(entry["leaf_hash"])
        assert rfc6962.leaf(data) == leaf
        assert orjson.loads(data)["index"] == entry["index"]
        proof = [base64.b64decode(h) for h in entry["inclusion_proof"]]
        assert rfc6962.verify_inclusion(
            entry["index"], checkpoint.tree_size, leaf, proof, checkpoint.root_hash
        ), entry["index"]
    return checkpoint


def test_review_verify_export_and_tamper(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess(data)
    try:
        ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
        platform = add_partner(data, "Kestrel Social", "technology")
        auditor = add_partner(data, "Oversight Board", "government-national", "--role", "audit")
        objects = [indicator(ngo["identity_id"], n=n, tlp=Tlp.GREEN) for n in range(3)]
        bundle_file = tmp_path / "bundle.json"
        bundle_file.write_bytes(orjson.dumps(bundle(objects)))
        target = ["--target", srv.target]
        run("submit", str(bundle_file), *target, "--token", ngo["token"])
        got = run(
            "subscribe", "--from-beginning", "--limit", "3", *target, "--token", platform["token"]
        )
        assert len(got.stdout.splitlines()) == 3
        first = objects[0]["id"]

        # Through the server, as the submitter: its submission and who received it.
        as_ngo = [*target, "--token", ngo["token"]]
        seen: list[dict[str, Any]] = []

        def delivered() -> bool:
            nonlocal seen
            seen = jsonl(
                run("audit", "log", "--object", first, "--format", "jsonl", *as_ngo).stdout
            )
            return any(e["action"] == "deliver" for e in seen)

        submitted = jsonl(
            run("audit", "log", "--object", first, "--format", "jsonl", *as_ngo).stdout
        )
        assert submitted[0]["action"] == "submit"
        assert (submitted[0]["actor"], submitted[0]["detail"]["outcome"]) == (
            ngo["partner_id"],
            "accepted",
        )
        # DELIVERIES (recorded by the subscription side, in batches shortly after).
        wait_until(delivered, 15, "the delivery to show in `exchange audit log`")
        delivery = next(e for e in seen if e["action"] == "deliver")
        assert (delivery["actor"], delivery["owner"]) == (platform["partner_id"], ngo["partner_id"])
        # An entry lists what the platform received of the NGO's objects over a span:
        # JSON has it whole.
        listed = [o["object_id"] for o in delivery["objects"]]
        assert first in listed and set(listed) <= {o["id"] for o in objects}
        assert delivery["object_id"] == ""

        # On the data directory while the server runs: the operator's table.
        table = run("audit", "log", "--object", first, "--data-dir", str(data)).stdout.splitlines()
        headers = ["INDEX", "TIME", "ACTION", "ACTOR", "PARTNER", "OBJECT", "VERSION", "DETAIL"]
        assert table[0].split() == headers
        submit_row = next(line for line in table[1:] if " submit " in line)
        assert first in submit_row and ngo["partner_id"] in submit_row
        assert "accepted" in submit_row and objects[0]["modified"] in submit_row
        # The table shows the listed version asked about, not the others of its entry.
        (deliver_row,) = [line for line in table if " deliver " in line]
        assert platform["partner_id"] in deliver_row and first in deliver_row
        assert objects[0]["modified"] in deliver_row
        column = table[0].index("ACTION")
        assert all(line[column - 2 : column] == "  " for line in table)

        # Filters: times in ISO 8601, CSV out.
        today = datetime.now(UTC).date()
        tomorrow = (today + timedelta(days=1)).isoformat()
        day = ["--since", today.isoformat(), "--until", today.isoformat()]
        within = run(
            "audit", "log", *day, "--action", "submit", "--format", "csv", "--data-dir", str(data)
        ).stdout.splitlines()
        assert within[0].startswith("index,at,action,actor")
        assert len(within) == 1 + 3
        # One CSV row per version a deliver entry lists, each with its own digest.
        rows = run(
            "audit", "log", "--action", "deliver", "--format", "csv", "--data-dir", str(data)
        ).stdout.splitlines()  # fmt: skip
        received = list(csv.DictReader(rows))
        assert sorted(r["object_id"] for r in received) == sorted(o["id"] for o in objects)
        assert len({r["digest"] for r in received}) == 3
        later = run("audit", "log", "--since", tomorrow, "--data-dir", str(data))
        assert later.stdout == "" and "no matching entries" in later.stderr

        # Verify: the auditor through the server; a partner without the role may not.
        as_auditor = [*target, "--token", auditor["token"]]
        assert run("audit", "verify", *as_auditor).stdout.startswith("audit log intact")
        denied = run("audit", "verify", *as_ngo, code=1)
        assert "'audit' role" in denied.stderr and len(denied.stderr.splitlines()) == 1

        pem = run("audit", "public-key", *as_ngo).stdout
        assert pem.startswith("-----BEGIN PUBLIC KEY-----")
        assert run("audit", "public-key", "--data-dir", str(data)).stdout == pem
        key_file = tmp_path / "exchange-audit.pub"
        key_file.write_text(pem)

        # Export through the server: the auditor's whole log, the submitter's part.
        out = tmp_path / "audit.jsonl"
        run("audit", "export", "--output", str(out), *as_auditor)
        everything = jsonl(out.read_text())
        check_export(everything, pem)
        assert len(everything) - 1 == everything[0]["tree_size"]
        mine = jsonl(run("audit", "export", *as_ngo).stdout)
        check_export(mine, pem)
        assert all(ngo["partner_id"] in (e["actor"], e["owner"]) for e in mine[1:])
    finally:
        srv.stop()

    # Offline, on the data directory: intact, with the kept public key too.
    where = ["--data-dir", str(data)]
    assert run("audit", "verify", *where).stdout.startswith("audit log intact")
    assert "intact" in run("audit", "verify", "--public-key", str(key_file), *where).stdout
    offline = jsonl(run("audit", "export", *where).stdout)
    checkpoint = check_export(offline, pem)
    assert len(offline) - 1 == checkpoint.tree_size

    # One byte of one entry's bytes changed in the SQLite file: found, and named.
    with sqlite3.connect(data / "exchange.sqlite3") as db:
        index, stored = db.execute(
            "SELECT idx, data FROM audit WHERE action = 'submit' AND object_id = ?", (first,)
        ).fetchone()
        changed = bytearray(stored)
        at = bytes(stored).index(b'"digest":"') + len(b'"digest":"') + 5
        changed[at] ^= 0x01  # a digit of the object's digest, still valid JSON
        db.execute("UPDATE audit SET data = ? WHERE idx = ?", (bytes(changed), index))
    broken = run("audit", "verify", *where, code=EXIT_NOT_INTACT)
    assert broken.stdout.startswith("audit log NOT intact")
    assert f"entry {index:,}" in broken.stdout and "edited" in broken.stdout


def test_help_has_examples() -> None:
    for args in (
        ["audit"],
        ["audit", "log"],
        ["audit", "verify"],
        ["audit", "export"],
        ["audit", "checkpoint"],
        ["audit", "public-key"],
    ):
        out = run(*args, "--help").stdout
        assert "Usage:" in out and "Examples:" in out, args


def test_usage_errors(tmp_path: Path) -> None:
    assert "ISO 8601" in run("audit", "log", "--since", "last tuesday", code=2).stderr
    mixed = run("audit", "log", "--target", "127.0.0.1:1", "--data-dir", str(tmp_path), code=2)
    assert "--data-dir, --database and --config are for reading the store" in mixed.stderr
    missing = run("audit", "verify", "--data-dir", str(tmp_path / "nowhere"), code=1)
    assert missing.stderr.startswith(f"exchange: no exchange store in {tmp_path / 'nowhere'}")
    unreachable = run("audit", "log", "--target", "127.0.0.1:1", "--token", "tix_x", code=1)
    assert "cannot reach the exchange at 127.0.0.1:1" in unreachable.stderr


# -- checkpoints kept by the auditor (defect 12) ------------------------------------------------


def populate(settings: Settings, count: int) -> None:
    """A log of ``count`` entries, and the signing key, as a server leaves them."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    Signer.load_or_create(settings.signing_key_path)

    async def append() -> None:
        store = open_store(settings)
        await store.open()
        try:
            for start in range(0, count, 50):
                await store.append_audit(
                    [
                        Event(Action.LOOKUP, f"partner-{n % 3}", 1_700_000_000.0 + n)
                        for n in range(start, min(start + 50, count))
                    ]
                )
        finally:
            await store.close()

    asyncio.run(append())


def tamper(settings: Settings, action: Callable[[Store, Intruder], Awaitable[None]]) -> None:
    async def go() -> None:
        store = open_store(settings)
        await store.open()
        where = settings.database or str(settings.data_path / "exchange.sqlite3")
        try:
            await action(store, Intruder("postgres" if settings.database else "sqlite", where))
        finally:
            await store.close()

    asyncio.run(go())


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_kept_checkpoint_catches_a_truncation_the_store_hides(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "data"
    where = ["--data-dir", str(data)]
    if store == "postgres":
        url = request.getfixturevalue("postgres_url")
        where += ["--database", url]
        settings = settings_for(data, database=url)
    else:
        settings = settings_for(data)
    populate(settings, 215)

    # The auditor keeps a checkpoint (and an export, whose first line is one too).
    kept = tmp_path / "kept" / "2026-11-27.json"
    kept.parent.mkdir()
    saved = run("audit", "checkpoint", "--output", str(kept), *where)
    assert "checkpoint of size 215" in saved.stderr and str(kept) in saved.stderr
    record = orjson.loads(kept.read_text())
    assert (record["type"], record["tree_size"]) == ("checkpoint", 215)
    assert record["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    Checkpoint.from_json(kept.read_text()).verify(record["public_key"])
    key_file = tmp_path / "exchange-audit.pub"
    key_file.write_text(record["public_key"])
    export = tmp_path / "export.jsonl"
    run("audit", "export", "--output", str(export), *where)

    # Intact: without a kept checkpoint the result says what it could not check.
    plain = run("audit", "verify", *where).stdout.strip()
    assert plain.startswith("audit log intact: 215 entries, 1 checkpoint")
    assert plain.endswith("truncation with deleted checkpoints would go unnoticed")
    held = run("audit", "verify", "--checkpoint", str(kept), "--public-key", str(key_file), *where)
    assert held.stdout.strip().endswith("; holds the checkpoint you kept, of size 215")
    populate(settings, 10)  # the log grows on: still holds it
    assert "holds the 2 checkpoints you kept" in (
        run(
            "audit", "verify", "--checkpoint", str(kept), "--checkpoint", str(export), *where
        ).stdout
    )

    # Cut to 120 entries, the checkpoints above deleted: the store alone cannot tell.
    async def truncate(s: Store, intruder: Intruder) -> None:
        await intruder.truncate(s, 120)

    tamper(settings, truncate)
    fooled = run("audit", "verify", *where).stdout
    assert fooled.startswith("audit log intact: 120 entries")
    assert "would go unnoticed" in fooled
    for given in (kept, export):
        caught = run(
            "audit", "verify", "--checkpoint", str(given), "--public-key", str(key_file), *where,
            code=EXIT_NOT_INTACT,
        )  # fmt: skip
        assert caught.stdout.startswith(f"audit log NOT intact: the checkpoint you kept ({given},")
        assert (
            "the log holds 120 entries, fewer than the 215 of the checkpoint you kept: entries"
            " 120 to 214 are missing (truncated)"
        ) in caught.stdout
        assert len(caught.stdout.splitlines()) == 1


def test_a_kept_checkpoint_through_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess(data)
    try:
        ngo = add_partner(data, "Harbor Light Alliance", "non-profit")
        auditor = add_partner(data, "Oversight Board", "government-national", "--role", "audit")
        objects = [indicator(ngo["identity_id"], n=n, tlp=Tlp.GREEN) for n in range(40)]
        bundle_file = tmp_path / "bundle.json"
        bundle_file.write_bytes(orjson.dumps(bundle(objects)))
        as_auditor = ["--target", srv.target, "--token", auditor["token"]]
        run("submit", str(bundle_file), "--target", srv.target, "--token", ngo["token"])
        key_file = tmp_path / "exchange-audit.pub"
        key_file.write_text(run("audit", "public-key", "--data-dir", str(data)).stdout)
        kept = tmp_path / "kept.json"
        run("audit", "checkpoint", "-o", str(kept), "--public-key", str(key_file), *as_auditor)
        size = orjson.loads(kept.read_text())["tree_size"]
        assert size > 40
        ok = run("audit", "verify", "--checkpoint", str(kept), *as_auditor).stdout.strip()
        assert ok.startswith("audit log intact")
        assert ok.endswith(f"holds the checkpoint you kept, of size {size:,} (consistency proven)")
        # A checkpoint file whose readable fields were edited is refused, not trusted.
        edited = tmp_path / "edited.json"
        edited.write_text(kept.read_text().replace(f'"tree_size":{size}', '"tree_size":1'))
        bad = run("audit", "verify", "--checkpoint", str(edited), *as_auditor, code=1)
        assert "is not a kept checkpoint: its tree_size says 1" in bad.stderr
    finally:
        srv.stop()

    # Entry 3 edited, every hash after it recomputed, every checkpoint deleted.
    settings = settings_for(data)

    async def rewrite(s: Store, intruder: Intruder) -> None:
        await intruder.rewrite(s, 3)
        await intruder.run("DELETE FROM audit_checkpoints")

    tamper(settings, rewrite)
    srv = ServerProcess(data)
    try:
        as_auditor = ["--target", srv.target, "--token", auditor["token"]]
        fooled = run("audit", "verify", *as_auditor).stdout
        assert fooled.startswith("audit log intact") and "would go unnoticed" in fooled
        caught = run(
            "audit", "verify", "--checkpoint", str(kept), "--public-key", str(key_file),
            *as_auditor, code=EXIT_NOT_INTACT,
        )  # fmt: skip
        assert caught.stdout.startswith(f"audit log NOT intact: the checkpoint you kept ({kept},")
        assert f"entries before {size:,} differ from the checkpoint you kept" in caught.stdout
    finally:
        srv.stop()

    # Cut short, with the checkpoints above deleted.
    async def truncate(s: Store, intruder: Intruder) -> None:
        await intruder.truncate(s, 10)

    tamper(settings, truncate)
    srv = ServerProcess(data)
    try:
        as_auditor = ["--target", srv.target, "--token", auditor["token"]]
        caught = run(
            "audit", "verify", "--checkpoint", str(kept), *as_auditor, code=EXIT_NOT_INTACT
        )
        assert f"fewer than the {size:,} of the checkpoint you kept: truncated" in caught.stdout
    finally:
        srv.stop()
