"""Tampering with a store's audit log behind its back, the way someone with the
SQLite file or the database's credentials would, for the tests that check that
``exchange audit verify`` notices."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace

from exchange_protocol import merkle

from exchange.audit.entries import Event
from exchange.store import Store

__all__ = ["Intruder"]


class Intruder:
    """Runs SQL on the store's own file or database, behind the store's back (``?``
    parameters; numbered for PostgreSQL)."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind = kind
        self.where = where

    async def run(self, *statements: str | tuple[str, tuple[object, ...]]) -> None:
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.where)) as conn, conn:
                for statement in statements:
                    sql, args = (statement, ()) if isinstance(statement, str) else statement
                    conn.execute(sql, args)
            return
        import asyncpg  # noqa: PLC0415 (PostgreSQL only)

        conn = await asyncpg.connect(self.where)
        try:
            async with conn.transaction():
                for statement in statements:
                    sql, args = (statement, ()) if isinstance(statement, str) else statement
                    parts = sql.split("?")
                    numbered = parts[0] + "".join(
                        f"${n}{part}" for n, part in enumerate(parts[1:], 1)
                    )
                    await conn.execute(numbered, *args)
        finally:
            await conn.close()

    async def rewrite(self, store: Store, index: int) -> None:
        """Change entry ``index``'s actor and recompute every hash after it, as someone
        covering their tracks would (the head of the chain too)."""
        rows = await store.audit_rows(0, 1_000_000)
        previous = rows[index - 1].leaf_hash if index else bytes(32)
        statements: list[tuple[str, tuple[object, ...]]] = []
        for row in rows[index:]:
            _, _, original = Event.decode(row.data)
            changed = replace(original, actor="partner-9") if row.log_index == index else original
            data = changed.encode(row.log_index, previous)
            previous = merkle.leaf_hash(data)
            statements.append(
                (
                    "UPDATE audit SET data = ?, leaf_hash = ?, actor = ? WHERE idx = ?",
                    (data, previous, changed.actor, row.log_index),
                )
            )
        if self.kind == "postgres":
            statements.append(("UPDATE audit_head SET leaf_hash = ?", (previous,)))
        await self.run(*statements)

    async def truncate(self, store: Store, size: int) -> None:
        """Cut the log to ``size`` entries, with the checkpoints larger than that."""
        statements: list[str | tuple[str, tuple[object, ...]]] = [
            ("DELETE FROM audit WHERE idx >= ?", (size,)),
            ("DELETE FROM audit_checkpoints WHERE tree_size > ?", (size,)),
        ]
        if self.kind == "postgres":
            leaf = (await store.audit_leaf_hashes(size - 1, size))[0] if size else bytes(32)
            statements.append(("UPDATE audit_head SET size = ?, leaf_hash = ?", (size, leaf)))
        await self.run(*statements)
