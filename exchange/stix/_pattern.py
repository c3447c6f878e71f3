"""STIX patterns: what they may cost, which object types they name, and what is wrong
with one, in words.

stix2 checks an indicator's pattern with the ``stix2patterns`` package (an ANTLR
grammar) and reports the first error as ANTLR words it: ``mismatched input '<EOF>'
expecting {IntNegLiteral, ...}``. ``pattern_problem`` parses the pattern the same
way, stops at that same first error, and says what was found, where (1-based
column) and what was expected instead, in the words of the STIX patterning
language: "expected a comparison after 'AND' at column 41".

It judges exactly as ``stix2patterns.validator.run_validator`` does (same lexer,
parser and error recovery up to the first error, and the same checks after a clean
parse), so a pattern is refused here if and only if stix2 refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from antlr4 import CommonTokenStream, InputStream, ParseTreeWalker, Token
from antlr4.error.Errors import InputMismatchException, NoViableAltException
from antlr4.error.ErrorStrategy import DefaultErrorStrategy
from stix2patterns.helpers import brackets_check
from stix2patterns.v20 import object_validator as object_validator20
from stix2patterns.v20.grammars.STIXPatternLexer import STIXPatternLexer as Lexer20
from stix2patterns.v20.grammars.STIXPatternParser import STIXPatternParser as Parser20
from stix2patterns.v20.inspector import InspectionListener as Inspector20
from stix2patterns.v21 import object_validator as object_validator21
from stix2patterns.v21.grammars.STIXPatternLexer import STIXPatternLexer as Lexer21
from stix2patterns.v21.grammars.STIXPatternParser import STIXPatternParser as Parser21
from stix2patterns.v21.inspector import InspectionListener as Inspector21
from stix2patterns.v21.validator import DuplicateQualifierTypeError, ValidationListener

from exchange.config import Limits
from exchange.stix._explain import printable, short
from exchange.stix._invalid import Invalid

__all__ = ["check_pattern_cost", "pattern_object_types", "pattern_problem"]

# STIX pattern string literals ('...' with \' and \\ escapes) may hold ':'; outside
# them a ':' only ever follows an object type.
_PATTERN_STRING = re.compile(r"'(?:[^'\\]|\\.)*'", re.DOTALL)
_PATTERN_OBJECT_TYPE = re.compile(r"([A-Za-z0-9_-]+)\s*:")

_EXAMPLE = "[file:name = 'x']"
_SHOWN_TOKEN = 40  # characters of a token quoted back


# -- cost and object types ---------------------------------------------------------


def check_pattern_cost(pattern: Any, limits: Limits) -> None:
    """Refuse a STIX pattern that would cost too much to parse: longer than
    ``max_pattern_length``, with more comparison expressions than
    ``max_pattern_comparisons``, or nesting brackets and parentheses deeper than
    ``max_pattern_depth``. Parsing cost grows with each (~0.24 ms per comparison here);
    one partner's costly patterns must not hold the cores everyone shares. Linear in
    the pattern's length, and run before the grammar sees it."""
    if not isinstance(pattern, str):
        return  # stix2 says what is wrong with it
    if len(pattern) > limits.max_pattern_length:
        raise Invalid(
            "pattern",
            f"a pattern of at most {limits.max_pattern_length:,} characters"
            f" (limits.max_pattern_length), got {len(pattern):,}",
            "limits.max_pattern_length",
        )
    # String literals may hold anything (brackets, colons): take them out first.
    skeleton = _PATTERN_STRING.sub("''", pattern)
    comparisons = len(_PATTERN_OBJECT_TYPE.findall(skeleton))
    if comparisons > limits.max_pattern_comparisons:
        raise Invalid(
            "pattern",
            f"a pattern of at most {limits.max_pattern_comparisons:,} comparison expressions"
            f" (limits.max_pattern_comparisons), got {comparisons:,}; split it into"
            " several indicators",
            "limits.max_pattern_comparisons",
        )
    depth = deepest = 0
    for char in skeleton:
        if char in "[(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "])":
            depth -= 1
    if deepest > limits.max_pattern_depth:
        raise Invalid(
            "pattern",
            f"brackets and parentheses nested at most {limits.max_pattern_depth} deep"
            f" (limits.max_pattern_depth), got {deepest}",
            "limits.max_pattern_depth",
        )


def pattern_object_types(pattern: str) -> set[str]:
    """Object types named in a pattern already accepted as syntactically valid."""
    return set(_PATTERN_OBJECT_TYPE.findall(_PATTERN_STRING.sub("''", pattern)))


# -- syntax, in words ----------------------------------------------------------------


def pattern_problem(pattern: str, version: str = "2.1") -> str:
    """What is wrong with ``pattern`` in the grammar of STIX ``version`` (stix2 reads
    any other version than "2.1" as 2.0), in one sentence; "" when nothing is.

    Call it only on a pattern that passed ``check_pattern_cost``.
    """
    grammar = _V21 if version == "2.1" else _V20
    if not pattern.strip():
        return _EMPTY
    lexer = grammar.lexer(InputStream(pattern))
    lexer.removeErrorListeners()  # stix2patterns ignores lexer errors: so do we
    parser = grammar.parser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser._errHandler = _StopAtFirstError()
    try:
        tree = parser.pattern()
    except _Fault as fault:
        return _words(fault, grammar)
    # The checks stix2patterns runs after a clean parse, in its order of precedence.
    if not brackets_check(pattern):
        return (
            f"expected {_OBSERVATION_WORDS} at the start (optionally inside parentheses);"
            " nothing, not even a comment, may come before it"
        )
    if grammar is _V21:
        try:
            ParseTreeWalker.DEFAULT.walk(ValidationListener(), tree)
        except DuplicateQualifierTypeError as exc:
            name = exc.qual_type.name.replace("STARTSTOP", "START/STOP")
            return (
                f"at most one {name} qualifier on an observation expression; "
                "put the expression in parentheses to qualify it again"
            )
    inspector = grammar.inspector()
    ParseTreeWalker.DEFAULT.walk(inspector, tree)
    for message in grammar.object_validator.verify_object(inspector.pattern_data()):
        # "FAIL: 'xyz' is not a valid SHA-256 hash": already words.
        return f"valid hash values; {printable(short(message.removeprefix('FAIL: '), 200))}"
    return ""


class _Fault(Exception):
    """The first syntax error: what kind, at which token, and what was expected."""

    def __init__(self, kind: str, token: Any, expected: frozenset[int], parser: Any) -> None:
        super().__init__(kind)
        self.kind = kind
        self.token = token
        self.expected = expected
        self.previous, self.before_previous = _previous(parser, token)


class _StopAtFirstError(DefaultErrorStrategy):  # type: ignore[misc]
    """ANTLR's own recovery strategy, except that the first error it would report
    ends the parse (raised as a _Fault): stix2patterns reports errors through the
    same strategy, so the first error is the same, and a pattern with one is
    refused whatever comes after it."""

    def reportError(self, recognizer: Any, e: Any) -> None:
        if isinstance(e, NoViableAltException):
            raise _Fault("no-alternative", e.offendingToken, frozenset(), recognizer)
        kind = "mismatch" if isinstance(e, InputMismatchException) else "other"
        raise _Fault(kind, e.offendingToken, _set(e.getExpectedTokens()), recognizer)

    def reportUnwantedToken(self, recognizer: Any) -> None:
        expected = _set(self.getExpectedTokens(recognizer))
        raise _Fault("extraneous", recognizer.getCurrentToken(), expected, recognizer)

    def reportMissingToken(self, recognizer: Any) -> None:
        expected = _set(self.getExpectedTokens(recognizer))
        raise _Fault("missing", recognizer.getCurrentToken(), expected, recognizer)


def _set(intervals: Any) -> frozenset[int]:
    if intervals is None or intervals.intervals is None:
        return frozenset()
    return frozenset(t for span in intervals.intervals for t in span)


def _previous(parser: Any, token: Any) -> tuple[Any, Any]:
    """The two tokens before ``token`` on the default channel (spaces and comments
    are not), nearest first; None where there are none."""
    tokens = parser.getTokenStream().tokens
    found: list[Any] = []
    index = token.tokenIndex - 1 if token is not None else -1
    while index >= 0 and len(found) < 2:
        if tokens[index].channel == Token.DEFAULT_CHANNEL:
            found.append(tokens[index])
        index -= 1
    found += [None, None]
    return found[0], found[1]


# -- wording ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grammar:
    """One version of the pattern grammar, and its token types grouped by meaning."""

    lexer: Any
    parser: Any
    inspector: Any
    object_validator: Any

    def types(self, *names: str) -> frozenset[int]:
        return frozenset(getattr(self.parser, n) for n in names if hasattr(self.parser, n))

    @property
    def values(self) -> frozenset[int]:
        return self.types(
            "IntNegLiteral",
            "IntPosLiteral",
            "FloatNegLiteral",
            "FloatPosLiteral",
            "HexLiteral",
            "BinaryLiteral",
            "StringLiteral",
            "BoolLiteral",
            "TimestampLiteral",
        )

    @property
    def operators(self) -> frozenset[int]:
        return self.types(
            "EQ", "NEQ", "LT", "LE", "GT", "GE", "IN", "LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET"
        )

    @property
    def names(self) -> frozenset[int]:
        return self.types("IdentifierWithoutHyphen", "IdentifierWithHyphen")


_V21 = _Grammar(Lexer21, Parser21, Inspector21, object_validator21)
_V20 = _Grammar(Lexer20, Parser20, Inspector20, object_validator20)

_OPERATOR_WORDS = "an operator such as =, !=, <, >=, IN, LIKE or MATCHES"
_VALUE_WORDS = (
    "a value (a quoted string like 'text', a number, true, false, "
    "or a timestamp like t'2026-01-31T00:00:00Z')"
)
_COMPARISON_WORDS = "a comparison like file:name = 'x'"
_OBSERVATION_WORDS = f"an observation expression in square brackets like {_EXAMPLE}"
_EMPTY = f"the pattern is empty: expected {_OBSERVATION_WORDS} at column 1"
# Tokens whose grammar name is not what a person types.
_TOKEN_WORDS = {
    "StringLiteral": "a quoted string like 'text'",
    "IntPosLiteral": "a positive number",
    "FloatPosLiteral": "a positive number",
    "IntNegLiteral": "a number",
    "FloatNegLiteral": "a number",
    "HexLiteral": "a hex value like h'ff'",
    "BinaryLiteral": "a base64 value like b'aGk='",
    "BoolLiteral": "true or false",
    "TimestampLiteral": "a timestamp like t'2026-01-31T00:00:00Z'",
    "IdentifierWithoutHyphen": "a name",
    "IdentifierWithHyphen": "a name",
    "EQ": "'='",
    "NEQ": "'!='",
    "HYPHEN": "'-'",
}


def _expected(grammar: _Grammar, expected: frozenset[int]) -> str:
    """What the grammar would have taken, in words: by group first, then token by token."""
    if len(expected & grammar.operators) > 1:
        return _OPERATOR_WORDS
    if expected & grammar.names and expected & grammar.types("EXISTS", "NOT", "LPAREN"):
        return _COMPARISON_WORDS
    if grammar.parser.LBRACK in expected:
        return _OBSERVATION_WORDS
    if len(expected & grammar.values) > 2:
        return _VALUE_WORDS
    words: list[str] = []
    for token_type in sorted(expected, key=lambda t: (t == Token.EOF, t)):
        word = _token_words(grammar, token_type)
        if word and word not in words:
            words.append(word)
    if not words:
        return "something else"
    if len(words) > 5:
        words = [*words[:5], "..."]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _token_words(grammar: _Grammar, token_type: int) -> str:
    if token_type == Token.EOF:
        return "the end of the pattern"
    names = grammar.parser.symbolicNames
    name = names[token_type] if 0 <= token_type < len(names) else ""
    if name in _TOKEN_WORDS:
        return _TOKEN_WORDS[name]
    literals = grammar.parser.literalNames
    literal = literals[token_type] if 0 <= token_type < len(literals) else ""
    # Keywords and punctuation: the grammar spells them as the pattern does ("'AND'").
    return literal if literal.startswith("'") and literal.endswith("'") else ""


def _shown(token: Any) -> str:
    text = printable(short(token.text, _SHOWN_TOKEN))
    # A string literal holds single quotes: set it off with double ones instead.
    return f'"{text}"' if "'" in text else f"'{text}'"


def _where(token: Any) -> str:
    # ANTLR counts columns from 0; people (and editors) from 1.
    column = f"column {token.column + 1}"
    return column if token.line == 1 else f"line {token.line}, {column}"


def _words(fault: _Fault, grammar: _Grammar) -> str:  # noqa: PLR0911 - one case per sentence
    """One sentence: what was found, where, and what was expected there."""
    token, previous = fault.token, fault.previous
    where = _where(token)
    expected = fault.expected
    if fault.kind == "no-alternative":
        expected = _expected_after(grammar, previous, fault.before_previous)
    wanted = _expected(grammar, expected) if expected else "something else"
    if token.type == Token.EOF:
        return f"unexpected end of pattern at {where}: expected {wanted}"
    shown = _shown(token)
    if token.type == grammar.lexer.InvalidCharacter:
        if token.text == '"':
            return f"unexpected '\"' at {where}: quote strings with single quotes, like 'text'"
        return f"unknown token {shown} at {where}: expected {wanted}"
    if fault.kind == "missing":
        return f"missing {wanted} before {shown} at {where}"
    if token.type == grammar.parser.QUOTE:
        return (
            f"unclosed string at {where}: a quoted string ends with ' (write \\' for a"
            " quote inside it)"
        )
    if token.type in grammar.names:
        if expected & grammar.operators:
            return f"unknown operator {shown} at {where}: expected {_OPERATOR_WORDS}"
        if expected & grammar.values:
            return (
                f"unquoted string {shown} at {where}: expected {wanted}; quote strings"
                f" with single quotes, like '{printable(short(token.text, _SHOWN_TOKEN))}'"
            )
        if not expected & (grammar.names | grammar.types("LBRACK")):
            joined = "; comparisons are joined with AND or OR" if _closes(grammar, expected) else ""
            return f"unknown token {shown} at {where}: expected {wanted}{joined}"
    hint = ""
    if token.type == grammar.parser.LBRACK and Token.EOF in expected:
        hint = "; observation expressions are joined with AND, OR or FOLLOWEDBY"
    if previous is not None and fault.kind != "extraneous":
        return f"expected {wanted} after {_shown(previous)} at {where}, got {shown}{hint}"
    return f"unexpected {shown} at {where}: expected {wanted}{hint}"


def _closes(grammar: _Grammar, expected: frozenset[int]) -> bool:
    """True when only a closing bracket was expected: the end of a comparison."""
    return bool(expected) and expected <= grammar.types("RBRACK", "RPAREN")


def _expected_after(grammar: _Grammar, previous: Any, before: Any) -> frozenset[int]:
    """What may follow ``previous`` where ANTLR found no way on and gives no set: a
    name after ':' or '.', ':' after an object type, an operator after a property."""
    if previous is None:
        return grammar.types("LBRACK", "LPAREN")
    if previous.type in grammar.types("COLON", "DOT"):
        return grammar.names
    if previous.type in grammar.names and (
        before is None or before.type not in grammar.types("COLON", "DOT")
    ):
        return grammar.types("COLON")
    if previous.type in grammar.names | grammar.types("RBRACK", "ASTERISK"):
        return grammar.operators | grammar.types("NOT")
    return frozenset()
