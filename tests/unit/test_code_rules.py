"""Rules of the code that no linter states: a broad ``except`` that swallows an error
(ruff's BLE001) stays only with the reason written beside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "exchange", ROOT / "clients" / "python"]
_NOQA_BLE = re.compile(r"#\s*noqa:[^#]*\bBLE001\b(?P<reason>.*)$")


def test_every_kept_broad_except_says_why() -> None:
    silent = []
    found = 0
    for directory in SOURCES:
        for path in sorted(directory.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                match = _NOQA_BLE.search(line)
                if match is None:
                    continue
                found += 1
                reason = match["reason"].strip(" -:()")
                if len(reason.split()) < 3:
                    silent.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found, "no BLE001 exemption found: is the pattern still right?"
    assert not silent, "say why the broad except stays (# noqa: BLE001 - why):\n" + "\n".join(
        silent
    )
