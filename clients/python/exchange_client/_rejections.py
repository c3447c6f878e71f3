"""Why the exchange refused an object: every problem it found, as plain Python values."""

from __future__ import annotations

from dataclasses import dataclass

from exchange_protocol.pb import exchange_pb2 as pb

__all__ = ["Problem", "RejectedObject"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a refused object."""

    property: str
    """The property at fault, as a path (``external_references[1].url``), or ``""``
    when the whole object is at fault."""
    expected: str
    """What was expected instead, in words."""
    message: str
    """The two as one line: ``property 'confidence': an integer from 0 to 100, got 250``."""


@dataclass(frozen=True, slots=True)
class RejectedObject:
    """An object of a submitted bundle that the exchange refused; nothing of it was stored."""

    object_id: str
    """The object's STIX id, or ``objects[N]`` when it has no usable id."""
    reason: str
    """One line a person can act on (the exchange's own wording), naming every problem."""
    property: str
    """The offending property of the first problem (e.g. ``confidence``), or ``""`` when
    the whole object is at fault."""
    expected: str
    """What was expected instead, in words (for the first problem)."""
    index: int
    """Position of the object in the submitted bundle."""
    version: str
    """The object's ``modified`` (or ``created``) timestamp, as sent."""
    problems: tuple[Problem, ...] = ()
    """Every problem the exchange reported, in the order found, the first one first
    (``property`` and ``expected``); one per property, at most 10."""
    more_problems: int = 0
    """Problems found but left out of ``problems`` to keep the answer short."""

    @classmethod
    def _from_pb(cls, message: pb.ObjectResult) -> RejectedObject:
        detail = message.rejection
        reason = _one_line(detail.message)
        if not reason:
            parts = [message.object_id or f"objects[{message.index}]"]
            if detail.property:
                parts.append(detail.property)
            parts.append(f"expected {detail.expected}" if detail.expected else "rejected")
            reason = ": ".join(parts)
        problems = tuple(
            Problem(
                p.property, p.expected, _one_line(p.message) or _message(p.property, p.expected)
            )
            for p in detail.problems
        )
        if not problems and (detail.property or detail.expected):
            # An exchange older than the problems field reports the first problem only.
            problems = (
                Problem(
                    detail.property, detail.expected, _message(detail.property, detail.expected)
                ),
            )
        return cls(
            object_id=message.object_id,
            reason=reason,
            property=detail.property,
            expected=detail.expected,
            index=message.index,
            version=message.version,
            problems=problems,
            more_problems=detail.more_problems,
        )


def _message(prop: str, expected: str) -> str:
    where = f"property '{prop}'" if prop else "object"
    return f"{where}: {expected}" if expected else where
