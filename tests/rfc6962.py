"""A second, independent Merkle tree implementation for the tests, written from
the recursive definitions of RFC 6962 section 2.1 (RFC 9162 section 2.1 keeps
them), to check the SDK's ``_merkle`` and the server's proofs against.

Deliberately naive (it recomputes subtrees, recursion everywhere) and sharing no
code with ``exchange_protocol.merkle``: where the two agree, they agree because
both follow the RFC. Every function takes the entries themselves (the RFC's
``D[n]``), not their leaf hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "leaf",
    "mth",
    "path",
    "proof",
    "root_from_consistency",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(entry: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return _h(b"\x00" + entry)


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of the entries ``d`` (RFC 6962 2.1)."""
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return leaf(d[0])
    k = _k(n)
    return _node(mth(d[:k]), mth(d[k:]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the audit path of entry ``m`` (RFC 6962 2.1.1), leaf side first."""
    n = len(d)
    if not 0 <= m < n:
        raise ValueError(f"no entry {m} in a tree of {n}")
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]): the consistency proof from the first ``m`` entries (RFC 6962 2.1.2)."""
    if not 0 < m <= len(d):
        raise ValueError(f"no consistency proof from {m} to {len(d)}")
    return _subproof(m, d, True)


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), mth(d[:k])]


# -- verification: the definitions above, run backwards ---------------------------------


def root_from_inclusion(m: int, n: int, leaf_hash: bytes, audit_path: Sequence[bytes]) -> bytes:
    """The root that ``audit_path`` leads to from ``leaf_hash`` at ``m`` in a tree of
    ``n``; ValueError when the path has the wrong length for that position."""
    if not 0 <= m < n:
        raise ValueError(f"no entry {m} in a tree of {n}")
    if n == 1:
        if audit_path:
            raise ValueError("path too long")
        return leaf_hash
    if not audit_path:
        raise ValueError("path too short")
    k = _k(n)
    *rest, sibling = audit_path
    if m < k:
        return _node(root_from_inclusion(m, k, leaf_hash, rest), sibling)
    return _node(sibling, root_from_inclusion(m - k, n - k, leaf_hash, rest))


def verify_inclusion(
    m: int, n: int, leaf_hash: bytes, audit_path: Sequence[bytes], root: bytes
) -> bool:
    try:
        return root_from_inclusion(m, n, leaf_hash, audit_path) == root
    except ValueError:
        return False


def root_from_consistency(
    m: int, n: int, consistency: Sequence[bytes], first_root: bytes
) -> tuple[bytes, bytes]:
    """(first root, second root) that a consistency proof from ``m`` to ``n`` entries
    implies, given the first tree's root (used where the proof omits it); ValueError
    when the proof has the wrong length."""
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from {m} to {n}")
    return _roots(m, n, True, list(consistency), first_root)


def _roots(m: int, n: int, b: bool, nodes: list[bytes], first_root: bytes) -> tuple[bytes, bytes]:
    if m == n:
        if b:
            # SUBPROOF(m, D[m], true) = {}: this subtree is the whole first tree.
            if nodes:
                raise ValueError("proof too long")
            return first_root, first_root
        if len(nodes) != 1:
            raise ValueError("proof has the wrong length")
        return nodes[0], nodes[0]
    if not nodes:
        raise ValueError("proof too short")
    k = _k(n)
    *rest, last = nodes
    if m <= k:
        old, new = _roots(m, k, b, rest, first_root)
        return old, _node(new, last)
    old, new = _roots(m - k, n - k, False, rest, first_root)
    return _node(last, old), _node(last, new)


def verify_consistency(
    m: int, n: int, consistency: Sequence[bytes], first_root: bytes, second_root: bytes
) -> bool:
    try:
        old, new = root_from_consistency(m, n, consistency, first_root)
    except ValueError:
        return False
    return old == first_root and new == second_root
