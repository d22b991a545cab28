"""Time helpers shared by every layer: the fixed-width RFC 3339 form of the etcd keys and values."""

from __future__ import annotations

import functools
import time


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
