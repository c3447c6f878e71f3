"""`exchange retention plan|run` on a data directory: the dry run lists what the
run then erases, and nothing more."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import orjson

from exchange import policy
from exchange.auth import new_token_credential
from exchange.model import Audience, Partner, Tlp, ValidObject
from exchange.store.sqlite import SqliteStore
from tests.e2e.process import EXCHANGE

NGO = Partner("ngo-1", "Harbor Light", "identity--a85607cf-558b-5b14-aeb1-d1b62765ef44")
DAY = 86_400.0


def exchange(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    return subprocess.run(
        [EXCHANGE, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def indicator(n: int, tlp: Tlp, valid_until: str | None = None) -> ValidObject:
    oid = f"indicator--00000000-0000-4000-8000-{n:012d}"
    extra = f',"valid_until":"{valid_until}"' if valid_until else ""
    body = f'{{"type":"indicator","id":"{oid}"{extra}}}'.encode()
    return ValidObject(oid, "indicator", "2026-01-01T00:00:00.000Z", NGO.identity_id, tlp, body)


async def fill(data_dir: Path) -> None:
    store = SqliteStore(data_dir / "exchange.sqlite3")
    await store.open()
    try:
        await store.add_partner(NGO, new_token_credential(NGO.partner_id, now=1.0)[0])
        now = time.time()
        for o, age in [
            (indicator(1, Tlp.RED), 100),
            (indicator(2, Tlp.RED), 10),
            (indicator(3, Tlp.GREEN, "2026-01-02T00:00:00Z"), 1),
            (indicator(4, Tlp.GREEN), 1000),
        ]:
            audience = Audience(o.tlp, NGO.partner_id)
            await store.commit_objects(NGO, [(o, audience)], now - age * DAY, policy.widen)
    finally:
        await store.close()


def test_plan_then_run_on_a_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "exchange.toml"
    config.write_text(
        f'data_dir = "{data}"\n[retention]\nbatch = 1\nexpire_valid_until = true\n'
        "[retention.max_age_days]\nred = 90\n"
        "[retention.communities]\nnobody-here = 5\n"
    )
    # No store there yet: refused, nothing created.
    missing = exchange("retention", "plan", config=config)
    assert missing.returncode == 1 and "no exchange store" in missing.stderr
    assert not data.exists()
    asyncio.run(fill(data))

    table = exchange("retention", "plan", config=config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["OBJECT", "COPY", "OF"]
    assert [line.split()[0] for line in lines[1:]] == [
        "indicator--00000000-0000-4000-8000-000000000001",
        "indicator--00000000-0000-4000-8000-000000000003",
    ]
    assert "tlp red: 90 days" in lines[1] and "valid_until 2026-01-02T00:00:00Z" in lines[2]
    assert "2 copies due" in table.stderr and "1 past their maximum age, 1 expired" in table.stderr
    assert "'nobody-here', which is not a community" in table.stderr

    as_json = exchange("retention", "plan", "--json", config=config)
    records = [orjson.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["object_id"][-2:], r["copy_of"], r["reason"]) for r in records] == [
        ("01", "ngo-1", "retention"),
        ("03", "ngo-1", "expired"),
    ]
    assert records[0]["age_days"] >= 100
    # In 81 days, the red one of 10 days is due too.
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 81 * DAY))
    ahead = exchange("retention", "plan", "--json", "--at", later, config=config)
    assert len(ahead.stdout.splitlines()) == 3

    # The run erases exactly what the plan listed (batch 1: two batches), no more.
    done = exchange("retention", "run", config=config)
    assert done.returncode == 0, done.stderr
    assert "2 copies erased" in done.stdout
    assert "1 past their maximum age, 1 expired" in done.stdout
    again = exchange("retention", "plan", config=config)
    assert again.stdout == "" and "nothing due" in again.stderr
    assert "nothing erased" in exchange("retention", "run", config=config).stdout


def test_help_explains(tmp_path: Path) -> None:
    out = subprocess.run(
        [EXCHANGE, "retention", "plan", "--help"], capture_output=True, text=True, check=False
    )
    assert "dry run" in out.stdout and "max_age_days" in out.stdout
    out = subprocess.run(
        [EXCHANGE, "retention", "run", "--help"], capture_output=True, text=True, check=False
    )
    assert "cannot be undone" in out.stdout
