"""Time helpers shared by every layer: the fixed-width RFC 3339 form of the etcd keys and values."""

from __future__ import annotations

import calendar
import functools
import re
import time
from datetime import UTC, datetime


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339(ts_ns: int) -> str:
    """`2026-11-26T06:56:49.123456789Z`: fixed width, so lexical order is time order."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    # The samples of one collection share their second: format it once.
    return f"{_second(seconds)}.{nanos:09d}Z"


def to_wall(monotonic_ns: int) -> str:
    """A CLOCK_MONOTONIC time as the RFC 3339 wall-clock time it corresponds to now."""
    return rfc3339(time.time_ns() - (time.monotonic_ns() - monotonic_ns))


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(text: str) -> int:
    """`2026-12-06T10:00:00.5+01:00` -> ns since the epoch; ValueError for anything else."""
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r} (e.g. 2026-12-06T10:00:00Z)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {text!r} ({exc})") from None
    seconds = calendar.timegm(moment.utctimetuple())
    if offset not in {"Z", "z"}:
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0"))
