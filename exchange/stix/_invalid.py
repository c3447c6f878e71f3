"""What the validation stages share: a reason to refuse an object, and the list of
them found in one object."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["Invalid", "Problems", "top_level"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_HEAD = re.compile(r"[^.\[]*")


class Invalid(Exception):
    """One reason to refuse an object; becomes a Rejection."""

    def __init__(self, prop: str, expected: str, limit: str = "") -> None:
        super().__init__(expected)
        self.prop = prop
        self.expected = expected
        # The setting whose limit was passed, when that is the reason.
        self.limit = limit


def top_level(prop: str) -> frozenset[str]:
    """The top-level properties a problem's path names: "external_references[1].url"
    names external_references, "created, modified" both; "" (the whole object) none."""
    if not prop:
        return frozenset()
    return frozenset(match.group(0) for part in prop.split(", ") if (match := _HEAD.match(part)))


class Problems:
    """The problems found in one object so far, in the order found.

    One per top-level property, the first found in it: a later check finding fault
    with the same property most often says the same thing again (stix2 and the
    exchange's own checks look at many of the same things). Problems with the
    object as a whole are all kept.
    """

    def __init__(self) -> None:
        self.found: list[Invalid] = []
        self._faulted: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.found)

    def add(self, problem: Invalid) -> None:
        names = top_level(problem.prop)
        if names & self._faulted:
            return
        self._faulted |= names
        self.found.append(problem)

    def faulted(self, name: str) -> bool:
        """True when a problem with top-level property ``name`` was found."""
        return name in self._faulted

    def run(self, check: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        """``check``'s result, or None when it found fault (the problem is added)."""
        try:
            return check(*args, **kwargs)
        except Invalid as exc:
            self.add(exc)
            return None
