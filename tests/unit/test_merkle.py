"""The SDK's Merkle hashing and proofs (``exchange_protocol.merkle``), checked
against an independent implementation of RFC 6962's definitions
(``tests/rfc6962.py``) on many tree sizes, and against the published
Certificate Transparency test vectors."""

from __future__ import annotations

import hashlib

import pytest
from exchange_protocol import merkle
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import rfc6962

# The Certificate Transparency reference tree (certificate-transparency's
# merkle_tree_test): eight entries, the root of every prefix, and proofs in it.
CT_ENTRIES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (0-based index, tree size, audit path)
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
# (first size, second size, proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def entries(n: int, salt: int = 0) -> list[bytes]:
    return [f'{{"index":{i},"salt":{salt}}}'.encode() for i in range(n)]


def leaves(d: list[bytes]) -> list[bytes]:
    # Hashed here with hashlib, not with either implementation under test.
    return [hashlib.sha256(b"\x00" + e).digest() for e in d]


def flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


# -- the reference vectors ---------------------------------------------------------------


def test_both_implementations_give_the_published_roots() -> None:
    for n, root in enumerate(CT_ROOTS):
        assert rfc6962.mth(CT_ENTRIES[:n]).hex() == root, n
        assert merkle.root_hash(leaves(CT_ENTRIES[:n])).hex() == root, n
    assert merkle.leaf_hash(b"").hex() == CT_ROOTS[1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, path: list[str]) -> None:
    d = CT_ENTRIES[:size]
    assert [h.hex() for h in rfc6962.path(index, d)] == path
    assert [h.hex() for h in merkle.inclusion_proof(leaves(d), index)] == path
    root = bytes.fromhex(CT_ROOTS[size])
    proof = [bytes.fromhex(h) for h in path]
    assert merkle.verify_inclusion(leaves(d)[index], index, size, proof, root)
    assert rfc6962.verify_inclusion(index, size, leaves(d)[index], proof, root)


@pytest.mark.parametrize(("first", "second", "proof"), CT_CONSISTENCY)
def test_published_consistency_proofs(first: int, second: int, proof: list[str]) -> None:
    d = CT_ENTRIES[:second]
    assert [h.hex() for h in rfc6962.proof(first, d)] == proof
    assert [h.hex() for h in merkle.consistency_proof(leaves(d), first)] == proof
    old, new = bytes.fromhex(CT_ROOTS[first]), bytes.fromhex(CT_ROOTS[second])
    nodes = [bytes.fromhex(h) for h in proof]
    assert merkle.verify_consistency(first, second, nodes, old, new)
    assert rfc6962.verify_consistency(first, second, nodes, old, new)


# -- every tree shape up to a size -------------------------------------------------------


def test_roots_agree_on_every_size_up_to_300() -> None:
    d = entries(300)
    hashed = leaves(d)
    builder = merkle.RootBuilder()
    assert builder.root() == rfc6962.mth([])
    for n in range(1, 301):
        builder.add(hashed[n - 1])
        expected = rfc6962.mth(d[:n])
        assert builder.root() == expected, n
        if n % 37 == 0:
            assert merkle.root_hash(hashed[:n]) == expected, n


def test_inclusion_proofs_agree_on_every_leaf_of_every_size_up_to_40() -> None:
    d = entries(40, salt=1)
    hashed = leaves(d)
    for n in range(1, 41):
        root = rfc6962.mth(d[:n])
        for m in range(n):
            ours = merkle.inclusion_proof(hashed[:n], m)
            assert ours == rfc6962.path(m, d[:n]), (m, n)
            assert merkle.verify_inclusion(hashed[m], m, n, ours, root), (m, n)
            assert rfc6962.root_from_inclusion(m, n, hashed[m], ours) == root


def test_consistency_proofs_agree_on_every_pair_of_sizes_up_to_40() -> None:
    d = entries(40, salt=2)
    roots = [rfc6962.mth(d[:n]) for n in range(41)]
    for n in range(1, 41):
        hashed = leaves(d[:n])
        for m in range(1, n + 1):
            ours = merkle.consistency_proof(hashed, m)
            assert ours == rfc6962.proof(m, d[:n]), (m, n)
            assert merkle.verify_consistency(m, n, ours, roots[m], roots[n]), (m, n)
            assert rfc6962.verify_consistency(m, n, ours, roots[m], roots[n]), (m, n)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=700))
def test_large_trees(data: st.DataObject, n: int) -> None:
    d = entries(n, salt=n)
    hashed = leaves(d)
    root = rfc6962.mth(d)
    assert merkle.root_hash(hashed) == root
    m = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    path = merkle.inclusion_proof(hashed, m)
    assert path == rfc6962.path(m, d)
    assert merkle.verify_inclusion(hashed[m], m, n, path, root)
    first = data.draw(st.integers(min_value=1, max_value=n), label="first")
    proof = merkle.consistency_proof(hashed, first)
    assert proof == rfc6962.proof(first, d)
    assert merkle.verify_consistency(first, n, proof, rfc6962.mth(d[:first]), root)


# -- what must not verify ------------------------------------------------------------------


def test_tampered_inclusion_proofs_fail_in_both() -> None:
    d = entries(23, salt=3)
    hashed = leaves(d)
    n = len(d)
    root = rfc6962.mth(d)
    for m in range(n):
        path = merkle.inclusion_proof(hashed, m)
        cases: list[tuple[bytes, int, int, list[bytes], bytes]] = [
            (flip(hashed[m]), m, n, path, root),  # another entry
            (hashed[m], m, n, path, flip(root)),  # another root
            (hashed[m], m, n, path[:-1], root),  # a hash short
            (hashed[m], m, n, [*path, root], root),  # a hash too many
            (hashed[m], (m + 1) % n, n, path, root),  # another position
        ]
        # (Another tree size with the same path shape verifies: the size is bound to
        # the root by the signed checkpoint, not by the proof.)
        for i in range(len(path)):
            cases.append((hashed[m], m, n, [*path[:i], flip(path[i], 31), *path[i + 1 :]], root))
        for leaf, index, size, proof, want in cases:
            assert not merkle.verify_inclusion(leaf, index, size, proof, want), (m, index, size)
            assert not rfc6962.verify_inclusion(index, size, leaf, proof, want), (m, index, size)
    assert not merkle.verify_inclusion(hashed[0], 0, 0, [], root)
    assert not merkle.verify_inclusion(hashed[0], -1, n, [], root)


def test_tampered_consistency_proofs_fail_in_both() -> None:
    d = entries(21, salt=4)
    roots = [rfc6962.mth(d[:n]) for n in range(22)]
    n = len(d)
    for m in range(1, n):
        proof = merkle.consistency_proof(leaves(d), m)
        cases: list[tuple[int, list[bytes], bytes, bytes]] = [
            (m, proof, flip(roots[m]), roots[n]),  # history rewritten
            (m, proof, roots[m], flip(roots[n])),
            (m, proof[:-1], roots[m], roots[n]),
            (m, [*proof, roots[n]], roots[m], roots[n]),
        ]
        for i in range(len(proof)):
            cases.append((m, [*proof[:i], flip(proof[i]), *proof[i + 1 :]], roots[m], roots[n]))
        for first, nodes, old, new in cases:
            assert not merkle.verify_consistency(first, n, nodes, old, new), (m, nodes)
            assert not rfc6962.verify_consistency(first, n, nodes, old, new), (m, nodes)
    # An edited entry changes every root from its index on.
    edited = [*d[:5], b"edited", *d[6:]]
    assert all(rfc6962.mth(edited[:k]) == roots[k] for k in range(6))
    assert all(rfc6962.mth(edited[:k]) != roots[k] for k in range(6, n + 1))
    assert not merkle.verify_consistency(0, n, [], roots[0], roots[n])
    assert not merkle.verify_consistency(n, n - 1, [], roots[n], roots[n - 1])


def test_proofs_of_impossible_positions_are_refused() -> None:
    hashed = leaves(entries(4))
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.inclusion_proof(hashed, 4)
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof(hashed, 5)
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof(hashed, 0)
