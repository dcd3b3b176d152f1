"""Request errors the servers map to 4xx; the message names the offending field.

A join-key value that is wrong is worded here (``join_key_error``), so REST, gRPC and
in-process calls answer the same bad request with the same line.
"""

from __future__ import annotations

from typing import Any

from featurestore.errors import FeatureStoreError
from featurestore.types import KEY_KIND_NOUNS


class BadRequestError(FeatureStoreError):
    """The request is malformed: a missing or mistyped field (HTTP 400 / INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedMediaTypeError(BadRequestError):
    """A POST body that is not declared JSON (HTTP 415): the message names its Content-Type."""


class TooManyEntitiesError(BadRequestError):
    """More entities than ``serving.max_entities`` (HTTP 413 / RESOURCE_EXHAUSTED)."""


class NotReadyError(FeatureStoreError):
    """The engine has not finished loading (HTTP 503 / UNAVAILABLE)."""


_JSON_KINDS = {bool: "boolean", float: "float", str: "string", list: "array", dict: "object"}


def shown(v: Any) -> str:
    """A request value as messages show it on every transport: its JSON text (shortened) and
    JSON type, a plain integer bare: ``null``, ``true (boolean)``, ``1.5 (float)``,
    ``"3" (string)``, ``[1,2] (array)``; a value JSON has no form for by repr and type name."""
    if v is None:
        return "null"
    t = type(v)
    if t is int:
        return str(v)
    if t is bool:
        return f"{'true' if v else 'false'} (boolean)"
    if isinstance(v, float):  # repr for all: JSON has no NaN or infinities
        text, kind = float.__repr__(v), "float"
    else:
        import orjson

        try:
            text = orjson.dumps(v).decode()
        except TypeError:
            text = repr(v)
        kind = _JSON_KINDS.get(t) or t.__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


def join_key_error(
    where: str, i: int, v: Any, *, holds: str | None = None, shown_as: str | None = None
) -> BadRequestError:
    """The error of join-key value ``v`` at ``where[i]`` (``where``: ``entities.user_id`` or
    ``rows.user_id``): no int or string, an int past 64 bits, or, with ``holds`` (the key's
    kind, "int" or "str"), a value of the other kind. ``shown_as`` words a value that has no
    Python form of its own (a gRPC timestamp)."""
    value = shown_as if shown_as is not None else shown(v)
    if holds is not None:
        noun = KEY_KIND_NOUNS[holds]
        key = where.split(".", 1)[-1]
        tail = (
            f", but join key '{key}' holds {noun} (its column in the feature views' sources); "
            f"send {noun}"
        )
    elif shown_as is None and type(v) is int:
        tail = ", outside the 64-bit range of integer join keys"
    else:
        tail = "; join keys are ints or strings"
    return BadRequestError(f"{where}[{i}] is {value}{tail}", field=where)
