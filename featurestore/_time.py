"""Time helpers: durations, and UTC microseconds as the one internal timestamp unit."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)\s*$")
_UNIT_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
    "w": 604_800_000_000,
}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_duration(value: str | timedelta | int | float | None) -> timedelta | None:
    """``"10m"``, ``"24h"``, ``"7d"``, a timedelta or seconds -> timedelta; None stays None."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"bad duration {value!r}; expected e.g. '90s', '10m', '24h', '7d'")
    return timedelta(microseconds=float(m.group(1)) * _UNIT_US[m.group(2)])


def duration_us(value: timedelta | None) -> int | None:
    """A timedelta in whole microseconds (None stays None)."""
    if value is None:
        return None
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds


def format_duration(value: timedelta | None) -> str | None:
    """The shortest exact ``<n><unit>`` spelling of a duration, for the registry and messages."""
    if value is None:
        return None
    us = duration_us(value)
    for unit in ("w", "d", "h", "m", "s", "ms"):
        if us % _UNIT_US[unit] == 0:
            return f"{us // _UNIT_US[unit]}{unit}"
    return f"{us}us"


def to_utc(value: datetime | str | int) -> datetime:
    """A timezone-aware UTC datetime. Naive datetimes are taken as UTC (documented), not shifted.

    Integers are microseconds since the epoch; strings are ISO 8601 or "now" (as in the CLI).
    """
    if isinstance(value, int):
        return EPOCH + timedelta(microseconds=value)
    if isinstance(value, str):
        if value == "now":
            return datetime.now(timezone.utc)
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a time: give an ISO 8601 string, 'now', a datetime or "
                "microseconds since the epoch"
            ) from None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def to_us(value: datetime | str | int) -> int:
    """UTC microseconds since the epoch."""
    if isinstance(value, int):
        return value
    return duration_us(to_utc(value) - EPOCH)  # type: ignore[return-value]


def now_us() -> int:
    """The wall clock in UTC microseconds (the clock ``datetime.now`` reads, without a datetime:
    serving asks for it on every request)."""
    return time.time_ns() // 1000
