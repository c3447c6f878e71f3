"""STIX objects the SDK writes for the caller: a revoked version, a sighting, a bundle.

Pure functions of their inputs and the current time; no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

# The public names (exported by the package); the builders are the clients' own.
__all__ = ["TLP_AMBER", "TLP_AMBER_STRICT", "TLP_CLEAR", "TLP_GREEN", "TLP_RED"]

# The OASIS TLP 2.0 marking definitions (the exchange writes these ids; copied from
# the exchange's stix/tlp.py, since the SDK must not import the server).
TLP_CLEAR: Final = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
TLP_GREEN: Final = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
TLP_AMBER: Final = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
TLP_AMBER_STRICT: Final = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
TLP_RED: Final = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"

TLP_MARKING_IDS: Final[Mapping[str, str]] = {
    "clear": TLP_CLEAR,
    "white": TLP_CLEAR,  # TLP 1.0's name for CLEAR
    "green": TLP_GREEN,
    "amber": TLP_AMBER,
    "amber+strict": TLP_AMBER_STRICT,
    "red": TLP_RED,
}


def _format(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, as STIX writes timestamps."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def stix_now(now: datetime | None = None) -> str:
    """The current time (or ``now``) as a STIX timestamp with milliseconds."""
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _format(moment.astimezone(UTC))


def _parse(value: str) -> datetime | None:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _timestamp(value: datetime | str, name: str) -> str:
    """A caller's ``first_seen`` / ``last_seen``: a datetime (naive means UTC) or ISO 8601 text."""
    if isinstance(value, datetime):
        return stix_now(value)
    if isinstance(value, str):
        parsed = _parse(value)
        if parsed is None:
            raise ValueError(
                f"{name} must be a datetime or ISO 8601 text such as '2026-11-27T10:00:00Z',"
                f" not {value!r}"
            )
        return _format(parsed.astimezone(UTC))
    raise TypeError(f"{name} must be a datetime or ISO 8601 text, not {type(value).__name__}")


def later_than(current: str | None, now: datetime | None = None) -> str:
    """``now`` as a STIX timestamp, moved to 1 ms after ``current`` if not already later."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    previous = _parse(current) if current else None
    if previous is not None and moment <= previous:
        step = previous + timedelta(milliseconds=1)
        moment = step.replace(microsecond=step.microsecond // 1000 * 1000)
    return _format(moment)


def revoked_version(obj: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A new version of ``obj`` with ``"revoked": true`` and ``modified`` strictly later.

    Everything else is kept, so the new version replaces the old one for
    everyone who received it.
    """
    if not isinstance(obj.get("id"), str) or not obj.get("type"):
        raise ValueError("revoke needs a STIX object with an id and a type")
    if obj.get("type") in {"marking-definition", "language-content"} or not obj.get("created"):
        raise ValueError(f"{obj['id']} has no versions (no created/modified): it cannot be revoked")
    current = obj.get("modified") or obj.get("created")
    revoked = dict(obj)
    revoked["revoked"] = True
    revoked["modified"] = later_than(current if isinstance(current, str) else None, now)
    return revoked


def sighting(
    indicator_id: str,
    *,
    count: int = 1,
    first_seen: datetime | str | None = None,
    last_seen: datetime | str | None = None,
    tlp: str = "amber",
    description: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A STIX 2.1 ``sighting`` of ``indicator_id`` (any SDO id), marked with ``tlp``."""
    if not isinstance(indicator_id, str) or "--" not in indicator_id:
        raise ValueError(
            f"indicator_id must be a STIX id such as 'indicator--<uuid>', not {indicator_id!r}"
        )
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, not {type(count).__name__}")
    if not 0 <= count <= 999_999_999:
        raise ValueError(f"count must be between 0 and 999999999 (STIX), not {count}")
    marking = TLP_MARKING_IDS.get(str(tlp).strip().lower())
    if marking is None:
        allowed = ", ".join(repr(k) for k in TLP_MARKING_IDS if k != "white")
        raise ValueError(f"unknown TLP {tlp!r}: expected one of {allowed}")
    stamp = stix_now(now)
    obj: dict[str, Any] = {
        "type": "sighting",
        "spec_version": "2.1",
        "id": f"sighting--{uuid.uuid4()}",
        "created": stamp,
        "modified": stamp,
        "sighting_of_ref": indicator_id.strip(),
        "count": count,
        "object_marking_refs": [marking],
    }
    if first_seen is not None:
        obj["first_seen"] = _timestamp(first_seen, "first_seen")
    if last_seen is not None:
        obj["last_seen"] = _timestamp(last_seen, "last_seen")
    if "first_seen" in obj and "last_seen" in obj and obj["last_seen"] < obj["first_seen"]:
        raise ValueError(
            f"last_seen ({obj['last_seen']}) is before first_seen ({obj['first_seen']})"
        )
    if description:
        obj["description"] = description
    return obj


def make_bundle(objects: Iterable[Any]) -> dict[str, Any]:
    """A STIX bundle (with a fresh id) holding ``objects`` (dicts or stix2 objects)."""
    return {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(objects)}
