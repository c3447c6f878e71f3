"""The fenced code blocks of a Markdown file, for the tests that hold the docs to account
(tests/e2e/test_docs.py runs the walk-throughs, tests/unit/test_doc_snippets.py compiles
the Python snippets)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "fenced_blocks"]

_FENCE = re.compile(r"^```(\w*)\s*$")
# The line before a block that the walk-through tests must leave out, and why.
_SKIP = re.compile(r"^<!-- docs-test: skip \(.+\) -->$")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int
    """The line of the opening fence (1-based)."""
    skipped: bool
    """Marked ``<!-- docs-test: skip (why) -->`` on the last non-blank line before it."""


def fenced_blocks(markdown: Path) -> list[Block]:
    """Every fenced block of ``markdown`` that names a language, in order."""
    blocks: list[Block] = []
    lines = markdown.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        fence = _FENCE.match(lines[number])
        if fence is None or not fence.group(1):
            number += 1
            continue
        end = lines.index("```", number + 1)
        previous = next((text for text in reversed(lines[:number]) if text.strip()), "")
        code = "\n".join(lines[number + 1 : end]) + "\n"
        blocks.append(Block(fence.group(1), code, number + 1, bool(_SKIP.match(previous))))
        number = end + 1
    return blocks
