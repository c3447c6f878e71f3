"""A platform's trust-and-safety pipeline watches the exchange's feed for values its
own users reported.

It keeps a file of values its users flagged (one per line: phone numbers, wallet
addresses, domains, account names...), subscribes to every indicator it may see,
and appends a JSON line to a matches file for each indicator whose pattern
names one of those values. The subscription reconnects by itself when the
exchange restarts or the network drops; where it stopped is kept in a cursor
file, so running the script again continues without missing or repeating
anything. When an indicator is erased (its creator took it back: it named a victim,
say), the exchange sends an erasure notice, and the script deletes the matches it
wrote for the versions named: the platform keeps no copy of an erased lead.

Run it against a running exchange::

    export EXCHANGE_TARGET=exchange.example.org:50051
    export EXCHANGE_TOKEN=...            # the platform's partner API token
    python platform_feed.py --values reported.txt --matches matches.jsonl

Stop it with Ctrl-C (or ``--limit N`` deliveries); start it again to go on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from exchange_client import Delivery, ErasureNotice, ExchangeClient, ExchangeError

# The quoted strings of a STIX pattern: "[x-phone-number:value = '+1555...']".
QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def read_values(path: Path) -> set[str]:
    """The values the platform's users reported (blank lines and # comments skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip().lower() for line in lines if line.strip() and not line.startswith("#")}


def pattern_values(pattern: str) -> set[str]:
    return {
        value.replace("\\'", "'").replace("\\\\", "\\").lower() for value in QUOTED.findall(pattern)
    }


def read_cursor(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_cursor(path: Path, cursor: str) -> None:
    """Replace the cursor file atomically: a crash leaves the old or the new cursor."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(cursor + "\n", encoding="utf-8")
    os.replace(temporary, path)


def match(delivery: Delivery, values: set[str]) -> list[str]:
    """The reported values an indicator's pattern names (none for revoked indicators)."""
    obj = delivery.object
    if delivery.object_type != "indicator" or obj.get("revoked") is True:
        return []
    return sorted(values & pattern_values(str(obj.get("pattern", ""))))


def forget(path: Path, notice: ErasureNotice) -> int:
    """Delete the matches of the erased versions from the matches file (rewritten in
    place: the append handle keeps writing at its end); how many were deleted."""
    erased = set(notice.versions)
    with path.open("r+", encoding="utf-8") as file:
        lines = file.readlines()
        kept = [
            line
            for line in lines
            if not (
                (record := json.loads(line))["indicator_id"] == notice.object_id
                and record["version"] in erased
            )
        ]
        file.seek(0)
        file.writelines(kept)
        file.truncate()
    return len(lines) - len(kept)


def on_reconnect(attempt: int, error: BaseException) -> None:
    print(f"feed: reconnecting (attempt {attempt}): {error}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--values", type=Path, required=True, help="values users reported")
    parser.add_argument("--matches", type=Path, required=True, help="JSON lines appended here")
    parser.add_argument(
        "--cursor-file", type=Path, default=Path("platform_feed.cursor"), help="where it stopped"
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after N deliveries")
    args = parser.parse_args(argv)

    values = read_values(args.values)
    cursor = read_cursor(args.cursor_file)
    seen = found = 0
    try:
        with (
            ExchangeClient(timeout=None) as client,  # EXCHANGE_TARGET, EXCHANGE_TOKEN
            args.matches.open("a", encoding="utf-8") as matches,
        ):
            feed = client.subscribe(
                cursor=cursor,
                from_beginning=cursor is None,  # the first run reads the whole history
                types=["indicator"],
                on_reconnect=on_reconnect,  # reconnects with backoff, from the last cursor
            )
            for delivery in feed:
                if delivery.erased is not None:
                    # Erased by its creator or the operator: delete the local copy.
                    matches.flush()
                    gone = forget(args.matches, delivery.erased)
                    print(
                        f"erased: {delivery.object_id} ({delivery.erased.reason}),"
                        f" {gone} match(es) deleted",
                        file=sys.stderr,
                    )
                for value in match(delivery, values) if delivery.erased is None else []:
                    record = {
                        "value": value,
                        "indicator_id": delivery.object_id,
                        "version": delivery.version,
                        "pattern": delivery.object.get("pattern"),
                        "submitter": delivery.submitter,
                        "tlp": delivery.tlp,
                        "accepted_at": delivery.accepted_at.isoformat(),
                    }
                    matches.write(json.dumps(record) + "\n")
                    found += 1
                matches.flush()  # the match is on disk before the cursor moves past it
                write_cursor(args.cursor_file, feed.last_cursor or delivery.cursor)
                seen += 1
                if args.limit is not None and seen >= args.limit:
                    break
    except ExchangeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        print(f"feed: {seen} indicators read, {found} matches", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
