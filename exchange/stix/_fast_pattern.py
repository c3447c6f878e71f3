"""A fast acceptor for STIX 2.1 patterns: says "certainly valid" in a few microseconds,
or "not sure".

Checking an indicator's pattern is most of what ingesting it costs: stix2 runs the
ANTLR grammar of ``stix2patterns`` (``run_validator(pattern, '2.1')``), 0.35 ms for
the shortest pattern, over 1 ms for longer ones. ``accepted_object_types`` reads the
same grammar with one compiled regular expression for its tokens and a hand-written
recursive-descent parser (lark's LALR parser alone costs 4x to 9x as much: see
bench/patterns.py), 25x to 70x faster than ANTLR, and makes the checks the full path
makes after parsing: ``check_pattern_cost``'s limits, ``brackets_check``, duplicate
qualifiers on one observation expression, the hash values ``object_validator``
checks (with its own expressions), and the exchange's allowed object types.

It may only accept: whenever it is not certain it answers None, and the caller takes
the full path, which says what is wrong. So it answers None for anything it does not
read exactly as ANTLR does: a character outside the grammar's tokens, comments (the
cost limits would count what is inside them), a negative list index or a list index
ending a ``hashes`` path (stix2patterns fails on those with an AttributeError),
nesting deeper than ``_MAX_NESTING``, and every syntax error. tests/unit/
test_fast_pattern.py checks it against the full path on generated patterns.
"""

from __future__ import annotations

import re
from typing import Final

from stix2patterns.v21.object_validator import HASHES_REGEX

from exchange.config import Limits
from exchange.stix._stix2_stage import _PATTERN_OBJECT_TYPES

__all__ = ["accepted_object_types"]

# The grammar's WS rule (ANTLR skips these between tokens); each is str.isspace(), as
# brackets_check and check_pattern_cost's regular expressions need.
_WS = " \t\r\n\x0b\x0c\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_B64 = "[A-Za-z0-9+/]"
# One token per match (findall), after the whitespace before it. ANTLR's lexer takes
# the longest match; here the alternatives are tried in turn (most frequent first),
# made to agree where it matters: the identifiers h, b and t are not taken when a
# quote follows them, so h'..', b'..' and t'..' are read as literals or, when they are
# not valid ones, as ANTLR reads them: a one-letter identifier (from the last
# alternative) and a string; numbers (".5") before "."; two-character operators
# before one. The last alternative takes any other character but whitespace, so the
# matches cover the pattern (bar trailing whitespace): no character is skipped.
_TOKEN: Final = re.compile(
    rf"""[{_WS}]*+(
      (?:[hbt](?!')|[ac-gi-su-zA-Z_])[A-Za-z0-9_-]*+
    | [\[\]():,*]
    | '(?:[^'\\]|\\['\\])*+'
    | [+-]?(?:[0-9]*+\.[0-9]++|0|[1-9][0-9]*+)
    | <=|>=|<>|!=|==|[=<>.]
    | h'(?:[0-9A-Fa-f]{{2}})*+'
    | b'(?:{_B64}{{4}})*(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)'
    | t'[0-9]{{4}}-(?:0[1-9]|1[012])-(?:0[1-9]|[12][0-9]|3[01])
        T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?Z'
    | [^{_WS}]
    )""",
    re.VERBOSE,
)

# Token kinds: keywords, punctuation and operators by their text (case matters).
_KEYWORDS = (
    "AND OR NOT FOLLOWEDBY LIKE MATCHES ISSUPERSET ISSUBSET EXISTS LAST IN START STOP"
    " SECONDS WITHIN REPEATS TIMES"
)
_FIXED: Final[dict[str, str]] = {
    **{word: word for word in _KEYWORDS.split()},
    **{char: char for char in "[]():.,*"},
    **dict.fromkeys(("=", "==", "!=", "<>"), "eq"),
    **dict.fromkeys(("<", "<=", ">", ">="), "order"),
    "true": "bool",
    "false": "bool",
}
_PREFIXED: Final = {"h": "hex", "b": "binary", "t": "timestamp"}
_NUMBER_START: Final = frozenset("+-.0123456789")
_END: Final = ""
_ORDERABLE: Final = frozenset(
    ("int", "-int", "float", "-float", "string", "binary", "hex", "timestamp")
)
_PRIMITIVE: Final = _ORDERABLE | {"bool"}
_STRING_OPERATORS: Final = frozenset(("LIKE", "MATCHES", "ISSUBSET", "ISSUPERSET"))
_QUALIFIERS: Final = {"WITHIN": 1, "REPEATS": 2, "START": 4}
# Brackets and parentheses nested deeper than this: not sure (bounds the recursion).
_MAX_NESTING: Final = 64
# object_validator's hash checks, as it runs them (re.match with its expressions).
_HASHES: Final = {name: re.compile(regex) for name, (regex, _) in HASHES_REGEX.items()}
_STAR: Final = object()  # a [*] list index in an object path


class _NotSure(Exception):
    """The pattern is not certainly accepted."""


def accepted_object_types(pattern: str, limits: Limits) -> frozenset[str] | None:
    """The object types a pattern names when it is certainly accepted by the full path
    (check_pattern_cost passes, run_validator(pattern, '2.1') finds no error, and its
    object types are all in _PATTERN_OBJECT_TYPES); None when not certain."""
    if not isinstance(pattern, str) or len(pattern) > limits.max_pattern_length:
        return None
    texts = _TOKEN.findall(pattern)
    kinds: list[str] = []
    depth = deepest = colons = 0
    for text in texts:
        kind = _FIXED.get(text)
        if kind is None:
            kind = _kind(text)
            if kind is None:
                return None
        elif kind in ("[", "("):
            depth += 1
            deepest = max(deepest, depth)
        elif kind in ("]", ")"):
            depth -= 1
        elif kind == ":":
            colons += 1
        kinds.append(kind)
    # As check_pattern_cost counts them: in a pattern the grammar takes, every ':' ends
    # an object type, and nothing but string literals holds a bracket or a ':'.
    if (
        colons > limits.max_pattern_comparisons
        or deepest > limits.max_pattern_depth
        or deepest > _MAX_NESTING
    ):
        return None
    kinds.append(_END)
    parser = _Parser(kinds, texts)
    try:
        parser.observations()
    except _NotSure:
        return None
    if kinds[parser.pos] != _END or not parser.types <= _PATTERN_OBJECT_TYPES:
        return None
    return frozenset(parser.types)


def _kind(text: str) -> str | None:
    """The kind of a token that is not a keyword, punctuation or operator; None for
    one the grammar has no token for (or ANTLR's InvalidCharacter)."""
    first = text[0]
    if first == "'":
        return "string" if len(text) > 1 else None
    if len(text) > 1 and text[1] == "'":
        return _PREFIXED[first]  # the regular expression's h'', b'' and t'' only
    if first.isascii() and (first.isalpha() or first == "_"):
        return "identifier-" if "-" in text else "identifier"
    if first in _NUMBER_START and (len(text) > 1 or first.isdigit()):
        kind = "float" if "." in text else "int"
        return "-" + kind if first == "-" else kind
    return None


class _Parser:
    """Recursive descent over token kinds. Operator precedence makes no difference to
    which patterns the grammar takes, so each level reads ``operand (op operand)*``
    with every operator of its level. Raises _NotSure at the first doubt."""

    __slots__ = ("kinds", "pos", "texts", "types")

    def __init__(self, kinds: list[str], texts: list[str]) -> None:
        self.kinds = kinds
        self.texts = texts
        self.pos = 0
        self.types: set[str] = set()

    def take(self, *wanted: str) -> str:
        kind = self.kinds[self.pos]
        if kind not in wanted:
            raise _NotSure
        self.pos += 1
        return kind

    def observations(self) -> None:
        """observationExpressions: joined by AND, OR and FOLLOWEDBY."""
        self.observation()
        while self.kinds[self.pos] in ("AND", "OR", "FOLLOWEDBY"):
            self.pos += 1
            self.observation()

    def observation(self) -> None:
        """[comparisons] or (observations), then qualifiers. stix2patterns refuses a
        qualifier type twice on a bracketed observation (not on a parenthesized one)."""
        simple = self.take("[", "(") == "["
        if simple:
            self.comparisons()
            self.take("]")
        else:
            self.observations()
            self.take(")")
        seen = 0
        while (qualifier := _QUALIFIERS.get(self.kinds[self.pos])) is not None:
            self.pos += 1
            if qualifier == 1:
                self.take("int", "float")
                self.take("SECONDS")
            elif qualifier == 2:
                self.take("int")
                self.take("TIMES")
            else:
                self.take("timestamp")
                self.take("STOP")
                self.take("timestamp")
            if simple and seen & qualifier:
                raise _NotSure
            seen |= qualifier

    def comparisons(self) -> None:
        """comparisonExpression: comparisons joined by AND and OR."""
        self.comparison()
        while self.kinds[self.pos] in ("AND", "OR"):
            self.pos += 1
            self.comparison()

    def comparison(self) -> None:
        """propTest, and object_validator's check of a hash value."""
        kind = self.kinds[self.pos]
        if kind == "(":
            self.pos += 1
            self.comparisons()
            self.take(")")
            return
        if kind == "EXISTS":
            self.pos += 1
            self.object_path()
            return
        path = self.object_path()
        if self.kinds[self.pos] == "NOT":
            self.pos += 1
        operator = self.take("eq", "order", "IN", *_STRING_OPERATORS)
        start = self.pos
        if operator == "eq":
            self.take(*_PRIMITIVE)
        elif operator == "order":
            self.take(*_ORDERABLE)
        elif operator == "IN":
            self.take("(")
            if self.kinds[self.pos] != ")":
                self.take(*_PRIMITIVE)
                while self.kinds[self.pos] == ",":
                    self.pos += 1
                    self.take(*_PRIMITIVE)
            self.take(")")
        else:
            self.take("string")
        if path is not None:
            # The literal's text as ANTLR's getText() gives it: its tokens, no spaces.
            _check_hash(path, "".join(self.texts[start : self.pos]))

    def object_path(self) -> list[object] | None:
        """objectType ':' firstPathComponent steps; the path's components (as the
        inspector reads them) when one is 'hashes', else None."""
        self.take("identifier", "identifier-")
        self.types.add(self.texts[self.pos - 1])
        self.take(":")
        path: list[object] = [self.name(self.take("identifier", "string"))]
        while (kind := self.kinds[self.pos]) in (".", "["):
            self.pos += 1
            if kind == ".":
                path.append(self.name(self.take("identifier", "string")))
            else:
                # A negative index fails stix2patterns' inspector (AttributeError).
                step = self.take("int", "*")
                path.append(_STAR if step == "*" else int(self.texts[self.pos - 1]))
                self.take("]")
        return path if "hashes" in path else None

    def name(self, kind: str) -> str:
        """A path component just taken, as the inspector reads it."""
        text = self.texts[self.pos - 1]
        if kind == "identifier":
            return text
        return text[1:-1].replace("\\'", "'").replace("\\\\", "\\")


def _check_hash(path: list[object], value: str) -> None:
    """object_validator.verify_object on one comparison of a path holding 'hashes'."""
    selector = path[-1]
    if selector is _STAR:
        return
    if not isinstance(selector, str):
        raise _NotSure  # stix2patterns calls .upper() on the int: AttributeError
    expression = _HASHES.get(selector.upper().replace("-", "").replace("'", ""))
    if expression is not None and not expression.match(value.replace("'", "")):
        raise _NotSure
