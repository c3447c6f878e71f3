"""Bundle-level checks: is this a STIX bundle we are willing to look inside?

Everything here is about the submission as a whole; problems with single objects
are left to :func:`exchange.stix.validate.validate_objects`, which answers per object.
"""

from __future__ import annotations

from typing import Any

import orjson

from exchange.config import Limits
from exchange.errors import InvalidBundle
from exchange.stix.vocab import is_stix_id

__all__ = ["decode_bundle"]

# orjson refuses documents nested deeper than this, whatever our own limit says.
_ORJSON_MAX_DEPTH = 1024
_EXPECTED = 'expected a STIX bundle object {"type": "bundle", "objects": [...]}'


def decode_bundle(raw: bytes, limits: Limits) -> list[Any]:
    """Decode ``raw`` and return the bundle's ``objects`` list, unvalidated.

    Checks, in order: size, UTF-8 JSON, nesting depth (the bundle is level 1),
    top-level shape, object count, bundle id. Raises InvalidBundle with one line
    a person can act on.
    """
    if len(raw) > limits.max_bundle_bytes:
        raise InvalidBundle(
            f"bundle is {len(raw):,} bytes; the limit is {limits.max_bundle_bytes:,}"
        )
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # `from None`: the exception holds the whole document in .doc.
        if exc.msg == "depth limit exceeded":
            raise InvalidBundle(_too_deep(min(limits.max_depth, _ORJSON_MAX_DEPTH))) from None
        raise InvalidBundle(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if _depth_exceeds(doc, limits.max_depth):
        raise InvalidBundle(_too_deep(limits.max_depth))

    if not isinstance(doc, dict):
        raise InvalidBundle(f"top level is {_json_kind(doc)}; {_EXPECTED}")
    if doc.get("type") != "bundle":
        raise InvalidBundle(f"top-level object {_describe_type(doc.get('type'))}; {_EXPECTED}")
    objects = doc.get("objects")
    if not isinstance(objects, list):
        what = "is missing" if objects is None else f"is {_json_kind(objects)}"
        raise InvalidBundle(f'bundle "objects" {what}; expected a list of STIX objects')
    if len(objects) > limits.max_objects:
        raise InvalidBundle(
            f"bundle holds {len(objects):,} objects; the limit is {limits.max_objects:,}"
        )
    if "id" in doc:
        bundle_id = doc["id"]
        if not (isinstance(bundle_id, str) and is_stix_id(bundle_id, "bundle")):
            shown = _quoted(bundle_id) if isinstance(bundle_id, str) else _json_kind(bundle_id)
            raise InvalidBundle(
                f'bundle "id" must be "bundle--" followed by a lower-case UUID, got {shown}'
            )
    return objects


def _too_deep(max_depth: int) -> str:
    return f"JSON nested deeper than {max_depth} levels"


def _depth_exceeds(doc: Any, max_depth: int) -> bool:
    """True if containers nest deeper than ``max_depth`` (the outermost is level 1).

    Iterative on purpose: a hostile document must not be able to exhaust the stack.
    """
    if not isinstance(doc, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _describe_type(found: Any) -> str:
    if found is None:
        return 'has no "type"'
    if isinstance(found, str):
        return f"has type {_quoted(found)}"
    return f'has "type" set to {_json_kind(found)}'


def _quoted(text: str) -> str:
    # JSON quoting keeps control characters in submitted text from breaking the line.
    return orjson.dumps(text[:80]).decode()


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool):
        return f"JSON {'true' if value else 'false'}"
    if value is None:
        return "JSON null"
    return "a JSON number"
