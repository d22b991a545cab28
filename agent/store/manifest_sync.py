"""Manifests kept in etcd under `manifests.etcd_prefix`, merged with the files.

Each key under the prefix holds one or more YAML manifest documents. The set is read at start
and every `manifests.etcd_refresh`; a changed set is validated and applied like a reload (an
invalid one is logged and the running set stays). The last set applied is cached in the state
directory, so an agent that restarts while etcd is away still knows the resources placed on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from agent.backoff import Backoff
from agent.errors import SinkUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from agent.health import Progress
    from agent.store.etcd import EtcdStore

_log = logging.getLogger(__name__)

REFRESH_S = 30.0
Sources = tuple[tuple[str, str], ...]


def read_cache(path: Path) -> Sources:
    """The cached set, or nothing when there is no readable cache."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return tuple((str(key), str(text)) for key, text in data)
    except (OSError, ValueError, TypeError):
        return ()


def write_cache(path: Path, sources: Sources) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(list(sources)), encoding="utf-8")
    temporary.replace(path)


class ManifestSync:
    name = "manifests"

    def __init__(
        self,
        store: EtcdStore,
        prefix: str,
        cache: Path,
        apply: Callable[[Sources], Awaitable[bool]],
        progress: Progress,
        *,
        refresh_s: float = REFRESH_S,
        current: Sources = (),
    ) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/") + "/"
        self.cache = cache
        self._apply = apply
        self._progress = progress
        self.current = current
        self._rejected: Sources | None = None
        self._refresh_s = refresh_s
        self._backoff = Backoff(cap_s=refresh_s)

    async def fetch(self) -> Sources:
        entries = await self._store.get_prefix(self._prefix.encode())
        return tuple(
            (f"etcd:{key.decode()}", value.decode("utf-8", "replace")) for key, value in entries
        )

    async def sync_once(self) -> bool:
        """Fetch and apply a changed set; True when something new was applied."""
        sources = await self.fetch()
        if sources in (self.current, self._rejected):
            return False
        if not await self._apply(sources):
            self._rejected = sources
            return False
        self.current = sources
        self._rejected = None
        await asyncio.to_thread(write_cache, self.cache, sources)
        return True

    async def run(self) -> None:
        self._progress.register(self.name, self._refresh_s * 2 + 30.0)
        try:
            while True:
                self._progress.tick(self.name)
                try:
                    await self.sync_once()
                except SinkUnavailable as exc:
                    _log.debug("manifests in etcd not read: %s", exc)
                    await asyncio.sleep(self._backoff.next())
                    continue
                self._backoff.reset()
                await asyncio.sleep(self._refresh_s)
        finally:
            self._progress.unregister(self.name)
