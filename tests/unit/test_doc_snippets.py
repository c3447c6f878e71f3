"""Every Python snippet of the SDK's README compiles, and imports only what exists.

The snippets of clients/python/README.md are reference material (they name a server
and files a reader has), so they are not run (tests/e2e/test_docs.py runs the
walk-throughs); but a snippet that no longer parses, or imports a name the SDK does
not export, would fail the first reader who copies it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.markdown import fenced_blocks

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "clients" / "python" / "README.md", REPO / "README.md"]


SNIPPETS = [
    pytest.param(block.code, id=f"{markdown.parent.name}/{markdown.name}:{block.line}")
    for markdown in DOCUMENTS
    for block in fenced_blocks(markdown)
    if block.language == "python"
]


def test_the_readmes_have_snippets() -> None:
    assert len(SNIPPETS) >= 10


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_compiles_and_imports_what_exists(code: str) -> None:
    tree = ast.parse(code)
    compile(tree, "<snippet>", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "stix2":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
