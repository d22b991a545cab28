"""What a collector may do beyond `collect`: optional capabilities, told apart by their shape.

The lifecycle asks a collector for a capability with `isinstance` against these runtime-checkable
Protocols, never against a concrete collector class, so a new collector gets the same treatment
by having the method.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agent.model import ModelView


@runtime_checkable
class HasViews(Protocol):
    """A model collector: what it knows of each model, for states and status documents."""

    views: Mapping[str, ModelView]


@runtime_checkable
class Watches(Protocol):
    """Reports model changes as they happen (an event stream), between collections."""

    def watch(self, on_view: Callable[[ModelView], None]) -> Coroutine[Any, Any, None]: ...


@runtime_checkable
class HasSizes(Protocol):
    """Knows image and volume sizes (name or id -> bytes, volume -> bytes)."""

    sizes: tuple[dict[str, int], dict[str, int]]


@runtime_checkable
class MeasuresGpu(Protocol):
    """Knows the GPU use of models: model -> (utilization %, memory MB), latest collection."""

    per_model: Mapping[str, tuple[float | None, float]]


@runtime_checkable
class Restarts(Protocol):
    """Can start a model's stopped container again, and tell a deliberate stop from a crash."""

    def stopped_on_purpose(self, model: str) -> bool: ...

    async def restart(self, model: str) -> bool: ...


@runtime_checkable
class Closes(Protocol):
    """Holds resources to release when it stops; `close` may return an awaitable."""

    def close(self) -> object: ...
