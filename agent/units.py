"""Durations, percentages and byte sizes as users write them: `500ms`, `10s`, `7d`, `80%`, `64MiB`.

Durations become float seconds, percentages float percent (80.0), sizes int bytes. A bare number is
refused for durations: `10` could mean seconds or milliseconds, and a wrong guess hides for months.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_TERM = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)")
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ns|us|ms|s|m|h|d)\s*)+$")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_PERCENT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*%\s*$")

DURATION_HINT = "a duration with a unit ns, us, ms, s, m, h or d, such as 500ms, 10s, 1h30m or 7d"


def parse_duration(value: object) -> float:
    """`"1h30m"` -> 5400.0 seconds. Raises ValueError with the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, str):
        # pydantic turns ValueError, not TypeError, into a validation error.
        raise ValueError(f"expected {DURATION_HINT}; got {value!r}")  # noqa: TRY004
    if not _DURATION.match(value):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HINT}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_TERM.findall(value))


def parse_percent(value: object) -> float:
    """`"80%"` -> 80.0."""
    if isinstance(value, str) and (match := _PERCENT.match(value)):
        return float(match.group(1))
    raise ValueError(f"expected a percentage such as 80%; got {value!r}")


def parse_size(value: object) -> int:
    """`"64MiB"` -> 67108864; a bare integer is bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])
    raise ValueError(f"expected a size such as 512KiB, 64MiB or 1GiB; got {value!r}")


def _positive(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in float seconds, written with a unit."""

PositiveDuration = Annotated[float, BeforeValidator(lambda v: _positive(parse_duration(v)))]

Percent = Annotated[float, BeforeValidator(parse_percent)]

ByteSize = Annotated[int, BeforeValidator(parse_size)]


class Quantity(BaseModel):
    """A threshold as written: a duration (unit "s"), a percentage ("%") or a plain number ("")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float
    unit: Literal["s", "%", ""]

    def __str__(self) -> str:
        if self.unit == "%":
            return f"{self.value:g}%"
        if self.unit == "s":
            return f"{self.value:g}s"
        return f"{self.value:g}"


def parse_quantity(value: object) -> object:
    if isinstance(value, Quantity | dict):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Quantity(value=float(value), unit="")
    if isinstance(value, str):
        if "%" in value:
            return Quantity(value=parse_percent(value), unit="%")
        try:
            return Quantity(value=parse_duration(value), unit="s")
        except ValueError:
            pass
    raise ValueError(f"expected a duration (500ms), a percentage (80%) or a number; got {value!r}")


Threshold = Annotated[Quantity, BeforeValidator(parse_quantity)]
