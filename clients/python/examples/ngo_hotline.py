"""An NGO pushes what its hotline learned to the exchange, as TLP:AMBER indicators.

Each row of a CSV export of the hotline's case tool becomes one STIX 2.1
indicator: a phone number a recruiter called from, or a wallet a victim was told
to pay a "visa fee" into. The indicators are marked TLP:AMBER and shared with one
community; they go out in batches with ``submit_many``, which reports progress
after every batch.

The CSV has a header row and the columns ``kind`` (``phone`` or ``wallet``),
``value``, ``first_seen`` (ISO 8601) and optionally ``note``::

    kind,value,first_seen,note
    phone,+15550104477,2026-11-02T09:30:00Z,caller posing as a modelling agency
    wallet,bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh,2026-11-03T17:05:00Z,deposit demanded

Run it against a running exchange::

    export EXCHANGE_TARGET=exchange.example.org:50051
    export EXCHANGE_TOKEN=...            # the NGO's partner API token
    python ngo_hotline.py hotline.csv --community sea-taskforce

Re-running it with the same CSV is safe: an indicator's id and timestamps come
from the row, so rows sent before come back as duplicates. Exits 0 when every
indicator was accepted (or already held), 2 when any was rejected, 1 on an error.
"""

from __future__ import annotations

import argparse
import csv
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exchange_client import ExchangeClient, ExchangeError, SubmitProgress

# The OASIS TLP 2.0 marking definition of TLP:AMBER.
TLP_AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
# Ids derived from the value (uuid5), so the same number is always the same indicator.
NAMESPACE = uuid.UUID("6f2c1e2a-8d51-4f0e-9a57-6a3f7b1c0d42")
PATTERNS = {
    "phone": "[x-phone-number:value = '{value}']",
    "wallet": "[cryptocurrency-wallet:address = '{value}']",
}
NAMES = {"phone": "Recruiter phone number", "wallet": "Wallet taking victims' fees"}


def stix_time(text: str) -> str:
    """ISO 8601 text (naive means UTC) as a STIX timestamp with milliseconds."""
    text = text.strip()
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def indicator(row: dict[str, str], line: int, label: str) -> dict[str, Any]:
    """One CSV row as a TLP:AMBER STIX indicator."""
    kind = row.get("kind", "").strip().lower()
    value = row.get("value", "").strip()
    if kind not in PATTERNS:
        raise ValueError(f"line {line}: kind must be one of {', '.join(PATTERNS)}, not {kind!r}")
    if not value:
        raise ValueError(f"line {line}: value is empty")
    try:
        seen = stix_time(row.get("first_seen", ""))
    except ValueError:
        raise ValueError(f"line {line}: first_seen is not an ISO 8601 time") from None
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid5(NAMESPACE, f'{kind}:{value}')}",
        "created": seen,
        "modified": seen,
        "name": NAMES[kind],
        "indicator_types": ["malicious-activity"],
        "pattern": PATTERNS[kind].format(value=quoted),
        "pattern_type": "stix",
        "valid_from": seen,
        "labels": [label],
        "confidence": 60,
        "object_marking_refs": [TLP_AMBER],
    }
    if note := row.get("note", "").strip():
        obj["description"] = f"Hotline report: {note}"
    return obj


def read_indicators(path: Path, label: str) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as file:
        rows: Iterable[dict[str, str]] = csv.DictReader(file)
        # Line 1 is the header.
        return [indicator(row, line, label) for line, row in enumerate(rows, start=2)]


def show_progress(progress: SubmitProgress) -> None:
    total = progress.total if progress.total is not None else "?"
    print(
        f"\r{progress.objects_done}/{total} sent: {progress.accepted} accepted, "
        f"{progress.duplicates} duplicate, {progress.rejected} rejected",
        end="",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("csv_file", type=Path, help="the hotline's CSV export")
    parser.add_argument(
        "--community", required=True, help="the community to share the indicators with"
    )
    parser.add_argument("--label", default="trafficking:hotline", help="label of every indicator")
    parser.add_argument("--batch-size", type=int, default=500, help="indicators per batch")
    args = parser.parse_args(argv)

    try:
        indicators = read_indicators(args.csv_file, args.label)
    except (OSError, ValueError) as err:
        print(f"error: {args.csv_file}: {err}", file=sys.stderr)
        return 1
    try:
        with ExchangeClient() as client:  # EXCHANGE_TARGET, EXCHANGE_TOKEN
            summary = client.submit_many(
                indicators,
                batch_size=args.batch_size,
                communities=[args.community],
                on_progress=show_progress,
            )
    except ExchangeError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    print(
        f"{len(summary.accepted)} accepted, {len(summary.duplicates)} duplicate, "
        f"{len(summary.rejected)} rejected"
    )
    for rejected in summary.rejected:
        print(f"  rejected: {rejected.reason}")
    for batch in summary.errors:
        print(f"  batch {batch.batch + 1} refused: {batch.error}")
    return 0 if summary.ok else 2


if __name__ == "__main__":
    sys.exit(main())
