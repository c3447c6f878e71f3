"""``exchange retention``: what the retention settings erase, and when.

``plan`` is the dry run: it lists every copy due now (or at ``--at``), with the rule
that makes it due, and changes nothing. ``run`` erases what is due now, batch after
batch (``retention.batch`` each), by the same path as ``exchange erase`` (reason
``retention`` or ``expired``, as the operator): for an operator who does not let
``exchange serve`` run the schedule. Both work on the store directly (``--data-dir``,
``--database``, ``--config``), also while the server runs. docs/retention.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import click

from exchange import errors
from exchange.cli._options import (
    config_option,
    data_dir_option,
    database_option,
    load_cli_settings,
    require_store,
)
from exchange.cli._output import fail, print_table, write_json_line
from exchange.cli._time import parse_time
from exchange.config import Settings
from exchange.model import EraseReason
from exchange.retention import DAY_S, Due, RetentionRun, due_copies, iso, run
from exchange.store import Store, open_store

__all__ = ["retention"]

T = TypeVar("T")

_SETTINGS_HELP = """
The rules are the [retention] settings (docs/configuration.md):
max_age_days per TLP level, communities (days per community), expire_valid_until.
A copy is due once the strictest rule that applies says so; its age counts from
when its latest version was accepted (a new version starts the count again)."""


@click.group(
    epilog="""\b
Examples:
  exchange retention plan --data-dir /var/lib/exchange
  exchange retention plan --at 2027-01-01 --json > due-by-new-year.jsonl
  exchange retention run --database postgresql://exchange@db.internal/exchange
"""
)
def retention() -> None:
    """What the retention settings erase: a dry run, or erase what is due now.

    Copies past the maximum age their TLP or a community sets, and indicators past
    their valid_until, are erased like any erasure: bodies removed from the store and
    the bus (tombstones), a notice to every recipient, an audit entry with the
    reason (retention or expired). `exchange serve` does this every
    retention.interval_s by itself; these commands show it ahead and run it by hand.
    """


def _open_settings(config_file: str | None, data_dir: str | None, database: str | None) -> Settings:
    settings = load_cli_settings(config_file, data_dir=data_dir, database=database)
    require_store(settings, what_else="or --database for PostgreSQL")
    return settings


def _with_store(settings: Settings, operation: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        store = open_store(settings)
        await store.open()
        try:
            return await operation(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except errors.ExchangeError as exc:
        fail(exc.message)


async def _unknown_communities(store: Store, settings: Settings) -> list[str]:
    known = {c.name for c in await store.list_communities()}
    return sorted(set(settings.retention.communities) - known)


def _row(due: Due) -> list[str]:
    return [
        due.object_id,
        due.copy_of,
        due.reason.value,
        due.rule,
        f"{due.age_s / DAY_S:.1f}",
        iso(due.due_at),
    ]


@retention.command(
    "plan",
    epilog="""\b
Examples:
  exchange retention plan
  exchange retention plan --at 2027-01-01T00:00:00Z
  exchange retention plan --json | jq -r 'select(.reason == "expired") | .object_id'
"""
    + _SETTINGS_HELP,
)
@config_option
@data_dir_option
@database_option
@click.option(
    "--at",
    metavar="TIME",
    callback=parse_time,
    help="What would be due at TIME (ISO 8601, UTC unless it says otherwise) instead of now.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line (object_id, copy_of, type, reason, rule, accepted_at,"
    " age_days, due_at) instead of a table.",
)
def plan_command(
    config_file: str | None,
    data_dir: str | None,
    database: str | None,
    at: datetime | None,
    as_json: bool,
) -> None:
    """List what retention would erase, and why; change nothing (a dry run).

    One line per copy due: the object id, whose copy (the partner that submitted
    it), the reason (retention: past its maximum age; expired: an indicator past its
    valid_until), the rule that applied, its age in days (since its latest version
    was accepted) and since when it is due. Never the object's content. The
    counts by reason go to stderr. `exchange retention run` (or the schedule of
    `exchange serve`) erases exactly these, oldest first, retention.batch per run.
    """
    settings = _open_settings(config_file, data_dir, database)
    now = at.timestamp() if at is not None else time.time()

    async def operation(store: Store) -> tuple[list[Due], list[str]]:
        due = [d async for d in due_copies(store, settings.retention, now)]
        return due, await _unknown_communities(store, settings)

    due, unknown = _with_store(settings, operation)
    _say_if_no_rule(settings)
    for name in unknown:
        click.echo(
            f"exchange: retention.communities names {name!r}, which is not a community"
            " of this exchange (its rule applies to nothing)",
            err=True,
        )
    if as_json:
        for d in due:
            write_json_line(d.record())
    elif due:
        print_table(
            ["OBJECT", "COPY OF", "REASON", "RULE", "AGE (DAYS)", "DUE SINCE"],
            [_row(d) for d in due],
        )
    click.echo(_counts("due", due, now), err=True)


def _say_if_no_rule(settings: Settings) -> None:
    r = settings.retention
    if not (r.max_age_days or r.communities or r.expire_valid_until):
        click.echo(
            "exchange: no retention rule is set, so nothing is ever due: set"
            " [retention] max_age_days, communities or expire_valid_until"
            " (docs/retention.md)",
            err=True,
        )


def _counts(what: str, due: list[Due], now: float) -> str:
    if not due:
        return f"nothing {what} at {iso(now)}"
    by = {
        r: sum(1 for d in due if d.reason is r)
        for r in (EraseReason.RETENTION, EraseReason.EXPIRED)
    }
    return (
        f"{len(due)} {'copy' if len(due) == 1 else 'copies'} {what} at {iso(now)}:"
        f" {by[EraseReason.RETENTION]} past their maximum age,"
        f" {by[EraseReason.EXPIRED]} expired"
    )


@retention.command(
    "run",
    epilog="""\b
Examples:
  exchange retention plan && exchange retention run
  exchange retention run --data-dir /var/lib/exchange
"""
    + _SETTINGS_HELP,
)
@config_option
@data_dir_option
@database_option
def run_command(config_file: str | None, data_dir: str | None, database: str | None) -> None:
    """Erase what retention says is due now (what `plan` lists); print the counts.

    For an exchange whose `exchange serve` does not run the schedule (or to catch up
    at once): erases batch after batch (retention.batch copies each, each copy in
    its own transaction) until nothing more is due. An erasure cannot be undone:
    run `exchange retention plan` first. Recipients get their erasure notices, and
    the bus its tombstones, from the running server's relay.
    """
    settings = _open_settings(config_file, data_dir, database)
    now = time.time()

    async def operation(store: Store) -> list[RetentionRun]:
        runs: list[RetentionRun] = []
        while True:
            done = await run(store, settings.retention, now)
            runs.append(done)
            # A batch that erased nothing cannot make progress (all skipped): stop.
            if not done.more or not done.erased:
                return runs

    runs = _with_store(settings, operation)
    _say_if_no_rule(settings)
    erased = [d for r in runs for d in r.erased]
    click.echo(_counts("erased", erased, now))
    skipped = sum(len(r.due) - len(r.erased) for r in runs)
    if skipped:
        click.echo(
            f"exchange: {skipped} planned {'copy was' if skipped == 1 else 'copies were'}"
            " skipped: erased or given a new version meanwhile",
            err=True,
        )
