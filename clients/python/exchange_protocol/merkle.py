"""RFC 6962 / RFC 9162 Merkle tree hashing and proofs, pure and small.

The exchange proves with these functions and partners verify with them, so a
receipt can be checked without trusting the server. Hashes are SHA-256; a leaf
is ``H(0x00 || entry)``, an interior node ``H(0x01 || left || right)``, and the
root of ``n`` leaves splits at the largest power of two below ``n``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "RootBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class RootBuilder:
    """Roots of a growing tree in one pass: ``add`` leaf hashes in order, ``root()``
    at any size. Keeps one hash per set bit of the size (the perfect subtrees)."""

    __slots__ = ("_peaks", "size")

    def __init__(self) -> None:
        self._peaks: list[tuple[int, bytes]] = []  # (height, hash), left to right
        self.size = 0

    def add(self, leaf: bytes) -> None:
        height, node = 0, leaf
        peaks = self._peaks
        while peaks and peaks[-1][0] == height:
            node = node_hash(peaks.pop()[1], node)
            height += 1
        peaks.append((height, node))
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.add(leaf)

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        node = self._peaks[-1][1]
        for _, peak in reversed(self._peaks[:-1]):
            node = node_hash(peak, node)
        return node


def root_hash(leaves: Sequence[bytes]) -> bytes:
    builder = RootBuilder()
    builder.extend(leaves)
    return builder.root()


def _subtree(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    builder = RootBuilder()
    builder.extend(leaves[start:end])
    return builder.root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (RFC 9162 2.1.3.1),
    leaf to root."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)} leaves")
    path: list[bytes] = []
    start, end = 0, len(leaves)
    # Walk down from the root, collecting the sibling subtree of each split.
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(_subtree(leaves, start + k, end))
            end = start + k
        else:
            path.append(_subtree(leaves, start, start + k))
            start += k
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: is ``leaf`` at ``index`` in the tree of ``tree_size`` with ``root``?"""
    if not 0 <= index < tree_size:
        return False
    fn, sn, node = index, tree_size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and node == root


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """Proof that the tree of ``leaves[:first]`` is a prefix of the tree of ``leaves``
    (RFC 9162 2.1.4.1)."""
    second = len(leaves)
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second} leaves")
    if first == second:
        return []

    def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [_subtree(leaves, start, end)]
        k = _split(n)
        if m <= k:
            return [*subproof(m, start, start + k, complete), _subtree(leaves, start + k, end)]
        return [*subproof(m - k, start + k, end, False), _subtree(leaves, start, start + k)]

    return subproof(first, 0, second, True)


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    """RFC 9162 2.1.4.2: does the tree of ``second`` leaves extend that of ``first``?"""
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first root is the first node
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root
