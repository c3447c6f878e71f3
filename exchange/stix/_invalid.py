"""The one exception the validation stages share: a reason to refuse an object."""

from __future__ import annotations

__all__ = ["Invalid"]


class Invalid(Exception):
    """One reason to refuse an object; becomes a Rejection."""

    def __init__(self, prop: str, expected: str, limit: str = "") -> None:
        super().__init__(expected)
        self.prop = prop
        self.expected = expected
        # The setting whose limit was passed, when that is the reason.
        self.limit = limit
