"""Waiting in tests for something that happens elsewhere: poll a probe until it gives a result.

`eventually` is for the event loop, `eventually_sync` for a blocking test. A probe is tried at once,
then every `interval` seconds, and once more when `seconds` have passed; the first truthy result
is returned. If none came, AssertionError says what was waited for and what the last probe gave.
`what` may be a callable, for a description made only when the wait failed (what arrived so far).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

What = str | Callable[[], str]


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    seconds: float = 10.0,
    what: What = "the condition",
    *,
    interval: float = 0.05,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    seconds: float = 10.0,
    what: What = "the condition",
    *,
    interval: float = 0.05,
) -> T: ...


async def eventually(
    probe: Callable[[], object],
    seconds: float = 10.0,
    what: What = "the condition",
    *,
    interval: float = 0.05,
) -> object:
    """The first truthy result of `probe` (a function or a coroutine function) within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, seconds, result))
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T | None],
    seconds: float = 10.0,
    what: What = "the condition",
    *,
    interval: float = 0.05,
) -> T:
    """`eventually` for a test that may block: the first truthy result of `probe`."""
    deadline = time.monotonic() + seconds
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, seconds, result))
        time.sleep(interval)


def _failure(what: What, seconds: float, last: object) -> str:
    description = what() if callable(what) else what
    return f"waited {seconds:g} s for {description}; the last probe gave {last!r}"
