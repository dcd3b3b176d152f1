"""JSON for feature values that JSON has no type for, the same in every answer and record."""

from __future__ import annotations

import base64
from typing import Any


def json_default(value: Any) -> Any:
    """orjson's ``default``: bytes (a ``Bytes`` feature) as standard base64 text, as
    protobuf's JSON mapping writes them; anything else unknown as its ``str()``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)
