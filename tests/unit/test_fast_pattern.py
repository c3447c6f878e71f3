"""The fast pattern acceptor (exchange.stix._fast_pattern) against the full path.

Property: ``accepted_object_types(p, limits)`` is None, or the full path accepts ``p``
(``check_pattern_cost`` passes, ``run_validator(p, '2.1')`` finds nothing, and the
object types are ones the exchange allows) and the answer is ``pattern_object_types(p)``.
Patterns come from the STIX 2.1 patterning grammar, from mutations of those, and from
stix2-patterns' own test cases (read from the installed package). The fast path must
also be worth having: it accepts at least 99% of the generated patterns the full path
accepts.

EXCHANGE_DIFFERENTIAL_EXAMPLES (default 300) sets the number of generated patterns
per property, for a long run: EXCHANGE_DIFFERENTIAL_EXAMPLES=100000 pytest ...
"""

from __future__ import annotations

import base64
import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stix2patterns.validator import run_validator

from exchange.config import Limits
from exchange.stix._fast_pattern import accepted_object_types
from exchange.stix._invalid import Invalid
from exchange.stix._pattern import check_pattern_cost, pattern_object_types
from exchange.stix._stix2_stage import _PATTERN_OBJECT_TYPES
from tests.environment import knob

# tests/environment.py keeps this knob when the session drops EXCHANGE_* settings.
EXAMPLES = int(knob("EXCHANGE_DIFFERENTIAL_EXAMPLES", "300"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEFAULT = Limits()
# Small limits, so that patterns near them are common.
SMALL = Limits(max_pattern_length=160, max_pattern_comparisons=3, max_pattern_depth=4)


def full_path_accepts(pattern: str, limits: Limits) -> bool:
    """What ingest decides today: cost limits, stix2patterns, allowed object types."""
    try:
        check_pattern_cost(pattern, limits)
    except Invalid:
        return False
    try:
        if run_validator(pattern, "2.1"):
            return False
    except Exception:  # stix2patterns fails (AttributeError...) on some; stix2 refuses them
        return False
    return pattern_object_types(pattern) <= _PATTERN_OBJECT_TYPES


def check(pattern: str, limits: Limits = DEFAULT) -> frozenset[str] | None:
    """The property, on one pattern; the fast answer."""
    fast = accepted_object_types(pattern, limits)
    if fast is not None:
        assert full_path_accepts(pattern, limits), f"fast path accepted {pattern!r}"
        assert fast == pattern_object_types(pattern), pattern
    return fast


# -- patterns from the grammar -------------------------------------------------------

WS = st.sampled_from([" "] * 8 + ["  ", "\t", "\n", "\r\n", "\xa0", "\u2003", "\u3000"])
GAP = st.one_of(st.just(""), WS)  # where the grammar needs no whitespace
# Now and then a type the grammar takes and the exchange does not.
TYPES = st.sampled_from(
    sorted(_PATTERN_OBJECT_TYPES) * 4 + ["x-unknown-thing", "foo", "x_custom", "Ab_1"]
)
NAME = st.one_of(
    st.sampled_from(["value", "name", "size", "src_ref", "dst_port", "extensions", "hashes"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
)
HASHES = {"MD5": 32, "'SHA-1'": 40, "'SHA-256'": 64, "SHA256": 64, "'SHA-512'": 128}
STRING_CHARS = st.characters(exclude_characters="'\\", exclude_categories=["Cs"])


@st.composite
def strings(draw: st.DrawFn) -> str:
    pieces = draw(
        st.lists(
            st.one_of(st.text(STRING_CHARS, max_size=8), st.sampled_from(["\\'", "\\\\"])),
            max_size=4,
        )
    )
    return "'" + "".join(pieces) + "'"


def ints(sign: bool = True) -> st.SearchStrategy[str]:
    number = st.integers(0, 10**12).map(str)
    if not sign:
        return number
    return st.tuples(st.sampled_from(["", "", "+", "-"]), number).map("".join)


FLOATS = st.tuples(
    st.sampled_from(["", "+", "-"]),
    st.sampled_from(["", "0", "1", "12", "007"]),
    st.from_regex(r"[0-9]{1,4}", fullmatch=True),
).map(lambda t: f"{t[0]}{t[1]}.{t[2]}")
TIMESTAMPS = st.tuples(
    st.datetimes(),
    st.sampled_from(["", ".1", ".123", ".000001"]),
).map(lambda t: f"t'{t[0].year:04}-{t[0]:%m-%dT%H:%M:%S}{t[1]}Z'")
HEX = st.binary(max_size=8).map(lambda b: f"h'{b.hex()}'")
BINARY = st.binary(min_size=1, max_size=12).map(lambda b: f"b'{base64.b64encode(b).decode()}'")
ORDERABLE = st.one_of(strings(), ints(), FLOATS, TIMESTAMPS, HEX, BINARY)
PRIMITIVE = st.one_of(ORDERABLE, st.sampled_from(["true", "false"]))


@st.composite
def object_paths(draw: st.DrawFn) -> str:
    first = draw(st.one_of(NAME, NAME, strings()))
    step = st.one_of(
        st.tuples(GAP, NAME).map(lambda t: f"{t[0]}.{t[1]}"),
        strings().map(lambda s: "." + s),
        st.sampled_from(["[0]", "[*]", "[12]", "[+1]", " [ * ]"]),
    )
    steps = "".join(draw(st.lists(step, max_size=3)))
    # Whitespace around the ':' now and then (the grammar takes it).
    colon = draw(st.sampled_from([":"] * 9 + [" : ", "\n:"]))
    return f"{draw(TYPES)}{colon}{first}{steps}"


@st.composite
def comparison(draw: st.DrawFn, depth: int) -> str:
    choice = draw(st.integers(0, 9))
    if choice == 0 and depth > 0:
        return f"({draw(GAP)}{draw(comparisons(depth - 1))}{draw(GAP)})"
    if choice == 1:
        return f"EXISTS{draw(WS)}{draw(object_paths())}"
    if choice == 2:  # a hash, right or (sometimes) of the wrong length
        name, size = draw(st.sampled_from(sorted(HASHES.items())))
        size = draw(st.sampled_from([size] * 5 + [size - 1]))
        value = draw(st.from_regex(f"[0-9a-fA-F]{{{size}}}", fullmatch=True))
        return f"{draw(TYPES)}:hashes.{name}{draw(WS)}={draw(WS)}'{value}'"
    path = draw(object_paths())
    negate = draw(st.sampled_from(["", "", "", "NOT "]))
    op = draw(
        st.sampled_from(
            [
                "=",
                "==",
                "!=",
                "<>",
                "<",
                "<=",
                ">",
                ">=",
                "IN",
                "LIKE",
                "MATCHES",
                "ISSUBSET",
                "ISSUPERSET",
            ]
        )
    )
    if op in ("=", "==", "!=", "<>"):
        value = draw(PRIMITIVE)
    elif op.startswith(("<", ">")):
        value = draw(ORDERABLE)
    elif op == "IN":
        items = draw(st.lists(PRIMITIVE, max_size=4))
        value = "(" + ("," + draw(GAP)).join(items) + ")"
    else:
        value = draw(strings())
    return f"{path}{draw(WS)}{negate}{op}{draw(WS)}{value}"


@st.composite
def comparisons(draw: st.DrawFn, depth: int) -> str:
    out = draw(comparison(depth))
    for _ in range(draw(st.integers(0, 2))):
        out += (
            f"{draw(WS)}{draw(st.sampled_from(['AND', 'OR']))}{draw(WS)}{draw(comparison(depth))}"
        )
    return out


QUALIFIERS = st.one_of(
    st.tuples(st.sampled_from(["5", "+1", "0", "1.5", ".25"])).map(
        lambda t: f"WITHIN {t[0]} SECONDS"
    ),
    ints(sign=False).map(lambda n: f"REPEATS {n} TIMES"),
    st.tuples(TIMESTAMPS, TIMESTAMPS).map(lambda t: f"START {t[0]} STOP {t[1]}"),
)


@st.composite
def observation(draw: st.DrawFn, depth: int) -> str:
    if depth > 0 and draw(st.integers(0, 4)) == 0:
        out = f"({draw(GAP)}{draw(observations(depth - 1))}{draw(GAP)})"
    else:
        out = f"[{draw(GAP)}{draw(comparisons(2))}{draw(GAP)}]"
    # One of each type (stix2patterns refuses two on a bracketed observation).
    for qualifier in draw(st.lists(QUALIFIERS, max_size=2, unique_by=lambda q: q[0])):
        out += draw(WS) + qualifier
    return out


@st.composite
def observations(draw: st.DrawFn, depth: int = 2) -> str:
    out = draw(observation(depth))
    for _ in range(draw(st.integers(0, 2))):
        joiner = draw(st.sampled_from(["AND", "OR", "FOLLOWEDBY"]))
        out += f"{draw(WS)}{joiner}{draw(WS)}{draw(observation(depth))}"
    return out


@st.composite
def patterns(draw: st.DrawFn) -> str:
    return draw(GAP) + draw(observations()) + draw(GAP)


# -- mutations -------------------------------------------------------------------------

ROUGH_TOKENS = re.compile(r"[a-z]?'(?:[^'\\]|\\.)*'|[\w-]+|\S")
ODD_TOKENS = [
    "[",
    "]",
    "(",
    ")",
    ":",
    ".",
    ",",
    "*",
    "=",
    "!",
    "<",
    ">",
    "-",
    "+",
    "/",
    "//",
    "/*x*/",
    '"',
    "'",
    "h'",
    "b'",
    "t'",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LAST",
    "EXISTS",
    "WITHIN",
    "and",
    "TRUE",
    "true",
    "[0]",
    "[-1]",
    "hashes",
    "'x'",
    "h'abc'",
    "b'A'",
    "b'=='",
    "b''",
    "5",
    "-0",
    "007",
    "1.",
    ".5",
    "t'2020-13-01T00:00:00Z'",
    "t'2020-01-01T24:00:00Z'",
    "'a\\nb'",
    "file:name",
    "x-phone-number:value",
    "\\",
    "\x00",
    "\x1c",
    "\u200b",
    "é",
    "§",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    pattern = draw(patterns())
    for _ in range(draw(st.integers(1, 3))):
        pattern = draw(st.sampled_from(MUTATIONS))(draw, pattern)
    return pattern


def _token_edit(draw: st.DrawFn, pattern: str) -> str:
    tokens = ROUGH_TOKENS.findall(pattern) or [""]
    i = draw(st.integers(0, len(tokens) - 1))
    j = draw(st.integers(0, len(tokens) - 1))
    how = draw(st.integers(0, 3))
    if how == 0:
        del tokens[i]
    elif how == 1:
        tokens.insert(i, draw(st.sampled_from(ODD_TOKENS)))
    elif how == 2:
        tokens[i], tokens[j] = tokens[j], tokens[i]
    else:
        tokens.insert(i, tokens[j])
    return draw(st.sampled_from([" ", ""])).join(tokens)


def _char_edit(draw: st.DrawFn, pattern: str) -> str:
    i = draw(st.integers(0, len(pattern)))
    char = draw(st.one_of(st.characters(), st.sampled_from(list("[]()'\\:.,= \t-+*"))))
    how = draw(st.integers(0, 2))
    if how == 0:
        return pattern[:i] + pattern[i + 1 :]
    if how == 1:
        return pattern[:i] + char + pattern[i:]
    return pattern[:i] + char + pattern[i + 1 :]


def _nest(draw: st.DrawFn, pattern: str) -> str:
    n = draw(st.integers(1, 80))
    closing = n + draw(st.sampled_from([0, 0, 0, -1, 1]))
    return "(" * n + pattern + ")" * closing


def _nest_inside(draw: st.DrawFn, pattern: str) -> str:
    n = draw(st.integers(1, 30))
    return pattern.replace("[", "[" + "(" * n, 1).replace("]", ")" * n + "]", 1)


def _squeeze(draw: st.DrawFn, pattern: str) -> str:
    """Whitespace taken out here and there (keywords run into names, LIKE'x'...)."""
    return re.sub(r"\s+", lambda m: draw(st.sampled_from(["", m.group()])), pattern)


def _glue(draw: st.DrawFn, pattern: str) -> str:
    return pattern + draw(st.sampled_from(["", " ", " AND "])) + draw(patterns())


MUTATIONS: list[Callable[[st.DrawFn, str], str]] = [
    _token_edit,
    _token_edit,
    _char_edit,
    _char_edit,
    _nest,
    _nest_inside,
    _squeeze,
    _glue,
]


# -- the properties ----------------------------------------------------------------------


# The long run takes its time: up to ~40 ms a case on a busy core.
LONG_RUN = pytest.mark.timeout(max(300, EXAMPLES // 10))


@LONG_RUN
@SETTINGS
@given(st.one_of(patterns(), mutated()), st.sampled_from([DEFAULT, DEFAULT, SMALL]))
def test_the_fast_path_accepts_only_what_the_full_path_accepts(
    pattern: str, limits: Limits
) -> None:
    check(pattern, limits)


@LONG_RUN
def test_the_fast_path_accepts_nearly_every_valid_pattern() -> None:
    counts = {"valid": 0, "fast": 0}
    missed: list[str] = []

    @SETTINGS
    @given(patterns())
    def run(pattern: str) -> None:
        fast = accepted_object_types(pattern, DEFAULT)
        if full_path_accepts(pattern, DEFAULT):
            counts["valid"] += 1
            counts["fast"] += fast is not None
            if fast is None:
                missed.append(pattern)
            else:
                assert fast == pattern_object_types(pattern), pattern
        else:
            assert fast is None, f"fast path accepted {pattern!r}"

    run()
    assert counts["valid"] >= EXAMPLES // 4, counts
    assert counts["fast"] >= 0.99 * counts["valid"], (counts, missed[:10])


# -- stix2-patterns' own test cases ------------------------------------------------------------


def _upstream_patterns() -> Iterator[Any]:
    """The first parameter of every parametrized test in stix2-patterns' v2.1 tests."""
    for name in ("test.v21.test_validator", "test.v21.test_inspector", "test.test_helpers"):
        module = importlib.import_module(f"stix2patterns.{name}")
        for function in vars(module).values():
            for mark in getattr(function, "pytestmark", []):
                if mark.name != "parametrize":
                    continue
                for case in mark.args[1]:
                    value = case[0] if isinstance(case, tuple) else case
                    if isinstance(value, str):
                        yield pytest.param(value, id=f"{name}:{value[:50]}")


UPSTREAM = list(_upstream_patterns())


@pytest.mark.parametrize("pattern", UPSTREAM)
def test_stix2_patterns_cases(pattern: str) -> None:
    check(pattern)


def test_stix2_patterns_valid_cases_are_mostly_accepted() -> None:
    valid = [p.values[0] for p in UPSTREAM if full_path_accepts(p.values[0], DEFAULT)]
    accepted = [p for p in valid if accepted_object_types(p, DEFAULT) is not None]
    assert len(valid) > 20
    assert len(accepted) >= 0.9 * len(valid), sorted(set(valid) - set(accepted))


# -- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "types"),
    [
        ("[x-phone-number:value = '+15550000000']", {"x-phone-number"}),
        (" ( [file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e'] )", {"file"}),
        (
            "[url:value LIKE '%x%'] AND [ipv4-addr:value = '1.2.3.4'] WITHIN 5 SECONDS",
            {"url", "ipv4-addr"},
        ),
        ("([file:name = 'a'] REPEATS 2 TIMES) REPEATS 3 TIMES", {"file"}),
        ("[file:name = 'a'] WITHIN 1 SECONDS REPEATS 2 TIMES", {"file"}),
        ("[email-message:body_multipart[*].body_raw_ref.name = 'x\\'y']", {"email-message"}),
    ],
)
def test_accepted(pattern: str, types: set[str]) -> None:
    assert check(pattern) == frozenset(types)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "[file:name = 'a'] WITHIN 1 SECONDS WITHIN 2 SECONDS",  # duplicate qualifier
        "[file:hashes.'SHA-256' = 'abc']",  # not a SHA-256
        "[file:hashes[0] = 'x']",  # stix2patterns: AttributeError
        "[file:names[-1] = 'x']",  # stix2patterns: AttributeError
        "[file:name = 'a'] // a comment",  # comments: not sure
        "[x-unknown:name = 'a']",  # a type the exchange does not allow
        "[file:name = 'a']\u200b",  # no token for it
        "[file:name = b'']",
        "(" * 17 + "[file:name = 'a']" + ")" * 17,  # deeper than max_pattern_depth
    ],
)
def test_not_sure(pattern: str) -> None:
    assert check(pattern) is None
