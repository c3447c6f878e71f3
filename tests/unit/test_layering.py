"""The dependency direction of docs/architecture.md, checked on the source.

Each module's imports are read with ``ast`` (those a module runs when it is imported:
module level, not inside functions or ``if TYPE_CHECKING``), and followed through the
repository's own modules, so "the store does not load grpc" means no chain of imports
from the store reaches grpc, as ``python -c "import exchange.store"`` would show."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "exchange": ROOT / "exchange",
    "exchange_client": ROOT / "clients" / "python" / "exchange_client",
    "exchange_protocol": ROOT / "clients" / "python" / "exchange_protocol",
}

# The data path and what it stands on: no transport, no wiring, no command line.
CORE = [
    "exchange.ingest",
    "exchange.validation",
    "exchange.stix",
    "exchange.policy",
    "exchange.store",
    "exchange.relay",
    "exchange.bus",
    "exchange.subscriptions",
    "exchange._tail",
    "exchange._feed",
    "exchange._subscription_request",
    "exchange._tasks",
    "exchange.lookup",
    "exchange.quota",
    "exchange.envelope",
    "exchange.audit",
    "exchange.registry",
    "exchange.auth",
    "exchange.model",
    "exchange.errors",
    "exchange.config",
]
UPPER = ["exchange.services", "exchange.taxii", "exchange.server", "exchange.cli"]

# (modules, what none of them may load, why)
RULES: list[tuple[list[str], list[str], str]] = [
    (CORE, ["grpc", *UPPER], "the core knows nothing of gRPC, the server or the CLI"),
    (CORE, ["exchange_client"], "the core shares only exchange_protocol with the SDK"),
    (
        [m for m in CORE if m not in ("exchange.store", "exchange.config")],
        ["asyncpg"],
        "only the PostgreSQL store needs asyncpg (an optional extra)",
    ),
    (
        [m for m in CORE if m not in ("exchange.bus", "exchange.config")],
        ["aiokafka"],
        "only the Kafka bus needs aiokafka",
    ),
    (
        ["exchange.store"],
        [
            "exchange.ingest",
            "exchange.validation",
            "exchange.policy",
            "exchange.relay",
            "exchange.subscriptions",
            "exchange.bus.kafka",
            "exchange.bus.local",
        ],
        "the store keeps what it is given: no policy, no pipeline (only the bus's value types)",
    ),
    (["exchange_client"], ["exchange"], "the SDK installs and runs without the server"),
    (
        ["exchange.cli.submit", "exchange.cli.objects", "exchange.cli.subscribe"],
        ["exchange.server", "exchange.store", "exchange.ingest", "exchange.services"],
        "the partner commands stand on the SDK alone (they could ship with it)",
    ),
    (
        ["exchange_protocol"],
        ["grpc", "exchange", "exchange_client"],
        "the shared primitives load without grpc (only *_pb2_grpc stubs need it)",
    ),
]


def modules() -> Iterator[tuple[str, Path]]:
    for package, directory in SOURCES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


MODULES = dict(modules())


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: module level, including under try/if,
    but not in function or class bodies' functions, nor under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _runtime_imports(node.body)
            yield from _runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _runtime_imports(block)
            for handler in node.handlers:
                yield from _runtime_imports(handler.body)
        elif isinstance(node, ast.ClassDef):
            yield from _runtime_imports(node.body)


def _package_of(name: str) -> str:
    return name if MODULES.get(name, Path()).name == "__init__.py" else name.rpartition(".")[0]


@cache
def direct_imports(name: str) -> frozenset[str]:
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in _runtime_imports(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = _package_of(name).split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        found.add(base)
        # `from package import module` imports the submodule too.
        found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first.
    for module in list(found):
        parts = module.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(found)


@cache
def loaded_by(name: str) -> frozenset[str]:
    """Every module importing ``name`` loads (ours followed, others as named)."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in MODULES:
            stack.extend(direct_imports(module))
    return frozenset(seen)


def within(module: str, prefixes: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_sources_are_found() -> None:
    assert "exchange.ingest" in MODULES
    assert "exchange_protocol.merkle" in MODULES
    assert {"grpc", "exchange.store"} <= loaded_by("exchange.server")


@pytest.mark.parametrize(("owners", "forbidden", "why"), RULES, ids=[r[2] for r in RULES])
def test_dependencies_point_one_way(owners: list[str], forbidden: list[str], why: str) -> None:
    broken = []
    for module in MODULES:
        if not within(module, owners) or module.endswith("_pb2_grpc"):
            continue
        bad = sorted(m for m in loaded_by(module) if within(m, forbidden))
        if bad:
            broken.append(f"{module} loads {', '.join(bad)}")
    assert not broken, f"{why}:\n" + "\n".join(broken)
