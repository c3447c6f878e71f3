"""The walk-throughs of README.md and clients/python/examples/README.md, run as written.

Every ``sh`` and ``python`` block of a walk-through runs, top to bottom, in one fresh
``bash`` (``set -euo pipefail``) against a fresh ``exchange serve`` whose data directory
is ``./exchange-data`` of the shell's working directory, as a reader's would be. A block
is left out only when the line before it says ``<!-- docs-test: skip (why) -->``. In the
shell blocks, a comment of three spaces after ``#`` (``#   lure.json: 1 accepted, ...``)
is output the reader should see: some line of the walk-through's output must match it
(``...`` stands for anything). So a walk-through that stops working, or that promises
output the commands no longer print, fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.process import ServerProcess
from tests.markdown import Block, fenced_blocks

REPO = Path(__file__).resolve().parents[2]

_EXPECTED = re.compile(r"^#   (\S.*)$")


def walkthrough(markdown: Path) -> list[Block]:
    """The ``sh`` and ``python`` blocks of ``markdown`` not marked to skip, in order."""
    return [
        block
        for block in fenced_blocks(markdown)
        if block.language in {"sh", "python"} and not block.skipped
    ]


def as_script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for block in blocks:
        parts.append(f"echo '--- block at line {block.line}' >&2")
        if block.language == "python":
            parts.append(f"python - <<'DOCS_TEST_PYTHON'\n{block.code}DOCS_TEST_PYTHON")
        else:
            parts.append(block.code)
    return "\n".join(parts) + "\n"


def expected_output(blocks: list[Block]) -> list[tuple[str, re.Pattern[str]]]:
    promised = []
    for block in blocks:
        if block.language != "sh":
            continue
        for text in block.code.splitlines():
            found = _EXPECTED.match(text.strip())
            if found:
                shown = found.group(1)
                pattern = ".*".join(re.escape(part) for part in shown.split("..."))
                promised.append((shown, re.compile(pattern)))
    return promised


def run_walkthrough(markdown: Path, workdir: Path) -> None:
    blocks = walkthrough(markdown)
    assert blocks, f"{markdown} has no walk-through"
    # The reader's checkout: the example files at the paths the text names.
    for name in ("examples", "clients"):
        (workdir / name).symlink_to(REPO / name, target_is_directory=True)
    server = ServerProcess(workdir / "exchange-data")
    try:
        venv_bin = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "EXCHANGE_TARGET": server.target,
        }
        done = subprocess.run(
            ["bash", "-c", as_script(blocks)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        server.stop()
    told = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, f"{markdown.name}: the walk-through failed\n{told}"
    output = done.stdout.splitlines()
    for shown, pattern in expected_output(blocks):
        assert any(pattern.fullmatch(line.strip()) for line in output), (
            f"{markdown.name} promises {shown!r}, which the walk-through did not print\n{told}"
        )


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    run_walkthrough(REPO / "README.md", tmp_path)


def test_the_examples_walkthrough_runs_as_written(tmp_path: Path) -> None:
    run_walkthrough(REPO / "clients" / "python" / "examples" / "README.md", tmp_path)


@pytest.mark.parametrize(
    "markdown",
    [REPO / "README.md", REPO / "clients" / "python" / "examples" / "README.md"],
    ids=["README", "examples"],
)
def test_every_promised_output_line_is_checked(markdown: Path) -> None:
    """The parser finds the walk-through's promises (a renamed marker would check nothing)."""
    assert expected_output(walkthrough(markdown))
