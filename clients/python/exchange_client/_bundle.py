"""Turn whatever a caller passes to ``submit`` into the UTF-8 JSON bytes sent on the wire.

stix2 is an optional extra: its objects are recognised by their ``serialize()``
method, never by importing stix2.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

from exchange_client._errors import ValidationError

__all__ = ["BundleInput", "encode_bundle"]


@runtime_checkable
class _Serializable(Protocol):
    """Anything with a stix2-style ``serialize()`` returning JSON text (e.g. ``stix2.Bundle``)."""

    def serialize(self) -> str: ...


BundleInput: TypeAlias = (
    Mapping[str, Any]
    | str
    | bytes
    | bytearray
    | memoryview
    | os.PathLike[str]
    | _Serializable
    | Sequence[Mapping[str, Any] | _Serializable]
)
"""What ``submit`` accepts: a dict, JSON text or bytes, a file path, a stix2 object,
or a list of STIX objects (dicts or stix2 objects; sent wrapped in a new bundle)."""


def _stix_timestamp(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    # STIX timestamps carry milliseconds unless more precision was given.
    return (text if value.microsecond % 1000 else text[:-3]) + "Z"


def _json_default(value: object) -> Any:
    """Encode the non-JSON values a hand-built bundle dict may hold (stix2 objects, datetimes)."""
    if isinstance(value, _Serializable):
        return json.loads(value.serialize())
    if isinstance(value, datetime):
        return _stix_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON in a STIX bundle")


def _json_text(text: str) -> str:
    """A ``str`` is JSON text, never a file name: a program that passes on text it was
    given must not be made to read a local file and send it. Text that cannot be a
    bundle (it does not start with ``{``) is refused here, saying how to send a file."""
    if text.lstrip(" \t\r\n\ufeff").startswith("{"):
        return text
    shown = text if len(text) <= 60 else text[:57] + "..."
    hint = (
        f"; to submit the file, pass pathlib.Path({text!r})"
        if "\n" not in text and os.path.isfile(text)
        else "; to submit a file, pass a pathlib.Path"
    )
    raise ValidationError(
        f"{shown!r} is not JSON text (a bundle starts with '{{'): submit() sends a str as"
        f" the bundle's JSON, never as a file name{hint}",
        code="INVALID_ARGUMENT",
    )


def encode_bundle(bundle: BundleInput) -> bytes:
    """The bytes to send for ``bundle``.

    Text and bytes are sent as they are (the exchange judges them; a ``str`` that
    does not even start like JSON raises ``ValidationError`` here); a path is
    read (a missing file raises ``FileNotFoundError``); a stix2 object is
    serialized; a mapping is encoded as JSON; a list (or tuple) of objects is
    wrapped in a new bundle. Anything else raises ``TypeError``.
    """
    if isinstance(bundle, bytes):
        return bundle
    if isinstance(bundle, bytearray | memoryview):
        return bytes(bundle)
    if isinstance(bundle, str):
        return _json_text(bundle).encode("utf-8")
    if isinstance(bundle, os.PathLike):
        with open(bundle, "rb") as file:
            return file.read()
    if isinstance(bundle, _Serializable):
        text = bundle.serialize()
        return text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if isinstance(bundle, list | tuple):
        for item in bundle:
            if not isinstance(item, Mapping | _Serializable):
                raise TypeError(
                    f"cannot submit a list of {type(item).__name__}: a list must hold STIX"
                    " objects (dicts or stix2 objects)"
                )
        bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": list(bundle)}
    if isinstance(bundle, Mapping):
        return json.dumps(
            bundle, ensure_ascii=False, separators=(",", ":"), default=_json_default
        ).encode("utf-8")
    raise TypeError(
        f"cannot submit a {type(bundle).__name__}: pass a dict, JSON str or bytes, "
        "a file path (pathlib.Path), a stix2 object, or a list of STIX objects"
    )
