"""The audit log as a Merkle tree: signed checkpoints and proofs.

The store holds the entries and their leaf hashes; ``AuditLog`` keeps, in memory,
every perfect subtree's hash (the leaves, pairs of leaves, fours, ...), extended
from the store as the log grows. Those never change in an append-only log, so the
root of any tree size and every proof takes O(log n) hashes instead of rehashing a
million leaves. The proofs are exactly RFC 9162's (the same as
``exchange_protocol.merkle``, which partners verify them with).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from exchange_protocol.merkle import EMPTY_ROOT, node_hash

from exchange.audit.signer import Signer
from exchange.errors import InvalidArgument, Unavailable
from exchange.store import AuditStore, SignedCheckpoint

__all__ = ["AuditLog"]

# Leaf hashes read from the store per query while catching up.
_PAGE = 100_000
# Catch-ups larger than this hash on a worker thread, off the event loop.
_INLINE = 5_000


class AuditLog:
    """Checkpoints and proofs over the store's audit log. ``signer`` None: a
    read-only log (proofs and kept checkpoints, no new signatures)."""

    def __init__(self, store: AuditStore, signer: Signer | None, origin: str) -> None:
        self._store = store
        self._signer = signer
        self._origin = origin
        self._tree = _Subtrees()
        self._lock = asyncio.Lock()

    @property
    def signer(self) -> Signer | None:
        return self._signer

    async def checkpoint(self) -> SignedCheckpoint:
        """The latest kept checkpoint if the log has not grown since; else a new one
        over every entry, signed now and kept."""
        async with self._lock:
            size = await self._catch_up()
            latest = await self._store.latest_checkpoint()
            if latest is not None and latest.tree_size == size:
                return latest
            if latest is not None and latest.tree_size > size:
                raise Unavailable(
                    f"the audit log holds {size:,} entries, but a checkpoint was signed at"
                    f" size {latest.tree_size:,}: entries are missing; run"
                    " `exchange audit verify` on the data directory"
                )
            if self._signer is None:
                raise Unavailable(
                    f"the audit log has grown to {size:,} entries since its latest"
                    " checkpoint, and this process has no signing key to sign a new one"
                )
            signed = self._signer.sign(self._origin, size, self._tree.root(0, size), time.time_ns())
            await self._store.add_checkpoint(signed)
        # Another process may have kept one of the same size first: that one counts.
        kept = await self._store.latest_checkpoint()
        return kept if kept is not None and kept.tree_size == size else signed

    async def root(self, tree_size: int) -> bytes:
        """The Merkle root of the first ``tree_size`` entries."""
        async with self._lock:
            size = await self._catch_up(tree_size)
            if not 0 <= tree_size <= size:
                raise InvalidArgument(
                    f"no tree of {tree_size:,} entries: the audit log holds {size:,}"
                )
            return self._tree.root(0, tree_size)

    async def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of ``tree_size`` entries,
        leaf to root (RFC 9162 2.1.3)."""
        async with self._lock:
            size = await self._catch_up(tree_size)
            if tree_size > size:
                raise InvalidArgument(
                    f"no tree of {tree_size:,} entries: the audit log holds {size:,};"
                    " ask for a proof in the tree of a checkpoint"
                )
            if not 0 <= index < tree_size:
                raise InvalidArgument(
                    f"entry {index:,} is not in the tree of {tree_size:,} entries (indexes 0"
                    f" to {tree_size - 1:,}); ask for a larger tree size"
                    if tree_size > 0
                    else "a tree of 0 entries holds no entry: ask for a larger tree size"
                )
            return self._tree.inclusion_proof(index, tree_size)

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """Proof that the tree of ``first`` entries is a prefix of the tree of
        ``second`` (RFC 9162 2.1.4)."""
        async with self._lock:
            size = await self._catch_up(second)
            if second > size:
                raise InvalidArgument(
                    f"no tree of {second:,} entries: the audit log holds {size:,}"
                )
            if not 0 < first <= second:
                raise InvalidArgument(
                    f"no consistency proof from {first:,} to {second:,} entries: the first"
                    " tree size must be at least 1 and at most the second"
                )
            return self._tree.consistency_proof(first, second)

    async def _catch_up(self, needed: int | None = None) -> int:
        """Cache the subtrees of every stored entry; the log's size (under the lock).
        With ``needed`` already cached: the cached size, without asking the store."""
        if needed is not None and needed <= self._tree.size:
            return self._tree.size
        size = await self._store.audit_size()
        while self._tree.size < size:
            start = self._tree.size
            end = min(size, start + _PAGE)
            leaves = await self._store.audit_leaf_hashes(start, end)
            if len(leaves) != end - start:
                raise Unavailable(
                    f"the audit log is missing entries between {start:,} and {end - 1:,};"
                    " run `exchange audit verify` on the data directory"
                )
            if len(leaves) > _INLINE:
                await asyncio.to_thread(self._tree.extend, leaves)
            else:
                self._tree.extend(leaves)
        return size


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class _Subtrees:
    """Hashes of the perfect subtrees of a growing tree: ``levels[h]`` holds, 32 bytes
    each, the roots of leaves [i * 2**h, (i + 1) * 2**h) for every complete one."""

    __slots__ = ("levels",)

    def __init__(self) -> None:
        self.levels: list[bytearray] = [bytearray()]

    @property
    def size(self) -> int:
        return len(self.levels[0]) // 32

    def extend(self, leaves: list[bytes]) -> None:
        self.levels[0] += b"".join(leaves)
        sha256 = hashlib.sha256
        height = 0
        while True:
            lower = self.levels[height]
            pairs = len(lower) // 64
            if pairs == 0:
                return
            if height + 1 == len(self.levels):
                self.levels.append(bytearray())
            upper = self.levels[height + 1]
            done = len(upper) // 32
            if done == pairs:
                return
            view = memoryview(lower)
            upper += b"".join(
                sha256(b"\x01" + view[64 * i : 64 * i + 64]).digest() for i in range(done, pairs)
            )
            height += 1

    def _perfect(self, height: int, i: int) -> bytes:
        return bytes(self.levels[height][32 * i : 32 * i + 32])

    def root(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end) (RFC 9162 2.1.1)."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self._perfect(n.bit_length() - 1, start // n)
        k = _split(n)
        return node_hash(self.root(start, start + k), self.root(start + k, end))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        path: list[bytes] = []
        start, end = 0, tree_size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self.root(start + k, end))
                end = start + k
            else:
                path.append(self.root(start, start + k))
                start += k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if first == second:
            return []

        def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
            n = end - start
            if m == n:
                return [] if complete else [self.root(start, end)]
            k = _split(n)
            if m <= k:
                return [*subproof(m, start, start + k, complete), self.root(start + k, end)]
            return [*subproof(m - k, start + k, end, False), self.root(start, start + k)]

        return subproof(first, 0, second, True)
