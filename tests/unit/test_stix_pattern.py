"""Pattern errors in words (exchange.stix._pattern): refused exactly when stix2patterns
refuses, said with the column and what was expected, never in ANTLR's words."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stix2patterns.validator import run_validator

from exchange.stix._pattern import pattern_problem

JARGON = (
    "mismatched input",
    "expecting",
    "extraneous",
    "no viable alternative",
    "<EOF>",
    "FAIL",
    "Literal",
    "Identifier",
    "{",
)

# Pieces of patterns, right and wrong, for random ones to be put together from.
FRAGMENTS = [
    "[",
    "]",
    "(",
    ")",
    "file:name",
    "url:value",
    "x-phone-number:value",
    "file:hashes.'SHA-256'",
    "network-traffic:src_port",
    "=",
    "!=",
    "==",
    ">",
    "<=",
    "IN",
    "LIKE",
    "MATCHES",
    "NOT",
    "EXISTS",
    "AND",
    "OR",
    "FOLLOWEDBY",
    "WITHIN",
    "5",
    "-3",
    "1.5",
    "SECONDS",
    "REPEATS",
    "TIMES",
    "START",
    "STOP",
    "t'2026-01-01T00:00:00Z'",
    "h'ff'",
    "b'aGk='",
    "true",
    "'a'",
    "'it\\'s'",
    "'",
    '"a"',
    "abc",
    "FOO",
    ":",
    ".",
    ",",
    "*",
    "§",
    "/* note */",
    "\n",
    " ",
]


def stix2_refuses(pattern: str) -> bool:
    try:
        return bool(run_validator(pattern, "2.1"))
    except Exception:  # stix2patterns fails on an empty pattern; stix2 refuses it
        return True


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (
            "[file:name = 'a' AND ]",
            "expected a comparison like file:name = 'x' after 'AND' at column 22, got ']'",
        ),
        (
            "[file:name = 'a' OR ]",
            "expected a comparison like file:name = 'x' after 'OR' at column 21, got ']'",
        ),
        ("[file:name = 'a'", "unexpected end of pattern at column 17: expected ']'"),
        ("[(file:name = 'a']", "missing ')' before ']' at column 18"),
        (
            "[file:name = abc]",
            "unquoted string 'abc' at column 14: expected a value (a quoted string like 'text',"
            " a number, true, false, or a timestamp like t'2026-01-31T00:00:00Z'); quote"
            " strings with single quotes, like 'abc'",
        ),
        (
            "[file:name FOO 'x']",
            "unknown operator 'FOO' at column 12: expected an operator such as =, !=, <, >=,"
            " IN, LIKE or MATCHES",
        ),
        (
            "[file:name = 'a' ORR file:size = 2]",
            "unknown token 'ORR' at column 18: expected ']'; comparisons are joined with AND or OR",
        ),
        ("[file = 'x']", "expected ':' after 'file' at column 7, got '='"),
        ("[file: = 'x']", "expected a name after ':' at column 8, got '='"),
        (
            "",
            "the pattern is empty: expected an observation expression in square brackets like"
            " [file:name = 'x'] at column 1",
        ),
        ("[file:name = 'a']]", "unexpected ']' at column 18: expected the end of the pattern"),
        (
            "[file:name = 'a'] [file:name = 'b']",
            "expected the end of the pattern after ']' at column 19, got '['; observation"
            " expressions are joined with AND, OR or FOLLOWEDBY",
        ),
        ("[file:name = 'a] ", "unclosed string at column 14"),
        ("[file:name = 'a'] WITHIN", "unexpected end of pattern at column 25: expected a positive"),
        ("[file:name = 'a']\nAND [", "unexpected end of pattern at line 2, column 6"),
        ("[file:name = 'a'] § ", "unknown token '§' at column 19"),
    ],
)
def test_errors_are_worded(pattern: str, words: str) -> None:
    assert pattern_problem(pattern).startswith(words)


def test_valid_patterns_have_no_problem() -> None:
    for pattern in (
        "[file:name = 'a']",
        "[file:name == 'a'] AND [url:value LIKE 'x%'] WITHIN 5 SECONDS",
        "([x-phone-number:value = '+1555'] OR [file:size > 3]) REPEATS 2 TIMES",
        "[file:hashes.'SHA-256' = '" + "e3b0c442" * 8 + "']",
    ):
        assert pattern_problem(pattern) == "", pattern


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14), st.sampled_from([" ", ""]))
def test_refused_exactly_when_stix2patterns_refuses(parts: list[str], joint: str) -> None:
    pattern = joint.join(parts)
    words = pattern_problem(pattern)
    assert bool(words) == stix2_refuses(pattern), (pattern, words)
    for jargon in JARGON:
        assert jargon not in words.replace(pattern, ""), (pattern, words)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_text_is_judged_as_stix2patterns_judges_it(pattern: str) -> None:
    assert bool(pattern_problem(pattern)) == stix2_refuses(pattern), pattern


def test_version_2_0_uses_its_own_grammar() -> None:
    # EXISTS came with STIX 2.1.
    assert pattern_problem("[EXISTS file:name]", "2.1") == ""
    assert pattern_problem("[EXISTS file:name]", "2.0") != ""
    assert stix2_refuses("[EXISTS file:name]") is False
    assert bool(run_validator("[EXISTS file:name]", "2.0"))
