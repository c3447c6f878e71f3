"""Pattern validation benchmark: the fast acceptor against stix2patterns.

For a few typical indicator patterns, prints µs per pattern for
``exchange.stix._fast_pattern.accepted_object_types`` (tokens, parse, every check),
for ``stix2patterns.validator.run_validator(pattern, '2.1')`` (what stix2 runs), and
their ratio; and, for comparison, a LALR parser of the same grammar built with lark
(parsing only: no limits, qualifier or hash checks), to show what a well-kept parsing
library costs against the hand-written parser. Each figure is the best of several
rounds, so other work on the machine inflates it less. It never fails on a timing.

Run ``python bench/patterns.py`` from the repository root (about 20 s).
"""

from __future__ import annotations

import platform
import sys
import timeit
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from typing import Any

import lark
from stix2patterns.validator import run_validator

from exchange.config import Limits
from exchange.stix._fast_pattern import accepted_object_types

PATTERNS = [
    "[x-phone-number:value = '+15550000000']",
    "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']",
    "[url:value = 'http://example.com/ad/123'] OR [domain-name:value LIKE '%.example.net']",
    "[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value"
    " ISSUBSET '198.51.100.0/24' AND network-traffic:dst_port IN (80, 443)]"
    " REPEATS 5 TIMES WITHIN 600 SECONDS",
    "([email-message:from_ref.value MATCHES '^recruit@.+\\\\.example$'] FOLLOWEDBY"
    " [cryptocurrency-wallet:value = '1BoatSLRHtKNngkdXEeobR76b53LETtpyT'])"
    " START t'2026-01-01T00:00:00Z' STOP t'2026-02-01T00:00:00Z'",
]

# The STIX 2.1 pattern grammar (stix2patterns' STIXPattern.g4), for lark's LALR parser.
LARK_GRAMMAR = r"""
start: obs
obs: obs_expr (JOIN obs_expr)*
JOIN.2: "AND" | "OR" | "FOLLOWEDBY"
obs_expr: ("[" comps "]" | "(" obs ")") qualifier*
qualifier: "WITHIN" (INT | FLOAT) "SECONDS"
         | "REPEATS" INT "TIMES"
         | "START" TIMESTAMP "STOP" TIMESTAMP
comps: comp (CJOIN comp)*
CJOIN.2: "AND" | "OR"
comp: "(" comps ")"
    | "EXISTS" path
    | path NOT? EQ primitive
    | path NOT? ORDER orderable
    | path NOT? "IN" "(" [primitive ("," primitive)*] ")"
    | path NOT? STROP STRING
NOT.2: "NOT"
EQ: "=" | "==" | "!=" | "<>"
ORDER: "<" | "<=" | ">" | ">="
STROP.2: "LIKE" | "MATCHES" | "ISSUBSET" | "ISSUPERSET"
path: IDENT ":" (IDENT | STRING) step*
step: "." (IDENT | STRING) | "[" (INT | "*") "]"
primitive: orderable | BOOL
orderable: INT | FLOAT | STRING | HEX | BINARY | TIMESTAMP
BOOL.2: "true" | "false"
INT: /[+-]?(0|[1-9][0-9]*)/
FLOAT.2: /[+-]?[0-9]*\.[0-9]+/
STRING: /'(?:[^'\\]|\\['\\])*'/
HEX.3: /h'(?:[0-9A-Fa-f]{2})*'/
BINARY.3: /b'(?:[A-Za-z0-9+\/]{4})*(?:[A-Za-z0-9+\/]{4}|[A-Za-z0-9+\/]{3}=|[A-Za-z0-9+\/]{2}==)'/
TIMESTAMP.3: /t'[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z'/
IDENT: /[A-Za-z_][A-Za-z0-9_-]*/
%ignore /[ \t\r\n]+/
"""


def best_us(function: Callable[[], Any], calls: int) -> float:
    """µs per call: the best of 5 rounds of ``calls`` calls."""
    return min(timeit.repeat(function, number=calls, repeat=5)) / calls * 1e6


def main() -> None:
    limits = Limits()
    parser = lark.Lark(LARK_GRAMMAR, parser="lalr")
    print(
        f"Python {platform.python_version()}, stix2-patterns {version('stix2-patterns')},"
        f" lark {lark.__version__}"
    )
    print(f"{'fast µs':>8} {'lark µs':>8} {'ANTLR µs':>9} {'ANTLR/fast':>11}  pattern")
    for pattern in PATTERNS:
        assert accepted_object_types(pattern, limits) is not None, pattern
        assert not run_validator(pattern, "2.1"), pattern
        parser.parse(pattern)
        fast = best_us(partial(accepted_object_types, pattern, limits), 20_000)
        lalr = best_us(partial(parser.parse, pattern), 1_000)
        antlr = best_us(partial(run_validator, pattern, "2.1"), 100)
        shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
        print(f"{fast:8.1f} {lalr:8.1f} {antlr:9.1f} {antlr / fast:10.0f}x  {shown}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
